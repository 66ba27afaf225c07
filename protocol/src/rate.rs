//! The send budget: a token bucket of `rate` frames per second holding at most `burst`.
//!
//! One definition for both ends: the server limits every frame a session sends with it,
//! and announces the budget in `LoginResult`; the client paces what it sends with its own
//! copy, started full at login like the server's, so a well-behaved client is never
//! refused. (Frames reach the server later than they leave the client, so the server's
//! bucket has refilled at least as much as the client's copy assumes.)

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    /// Consecutive refusals.
    pub refused: u32,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: now,
            refused: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }

    /// Takes one token whether or not there is one (a frame that must go anyway, such
    /// as an ACK: the debt delays what is paced behind it).
    pub fn charge(&mut self, now: Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }

    /// Tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// How long until `n` tokens are available (zero if they are now).
    pub fn time_until(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= n || self.rate <= 0.0 {
            return Duration::ZERO;
        }
        // At least a millisecond: a shortfall that rounds to zero would wake the caller
        // at the same instant, forever.
        Duration::from_secs_f64((n - self.tokens) / self.rate).max(Duration::from_millis(1))
    }

    /// The capacity.
    pub fn burst(&self) -> u32 {
        self.burst as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..7).filter(|_| b.take(t0)).count(), 5);
        assert_eq!(b.refused, 2);
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "one token after 100 ms at 10/s"
        );
        assert!(!b.take(t0 + Duration::from_millis(100)));
        assert_eq!(
            (0..20)
                .filter(|_| b.take(t0 + Duration::from_secs(60)))
                .count(),
            5,
            "capped at burst"
        );
    }

    #[test]
    fn charged_frames_delay_the_next_paced_one() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 2, t0);
        b.charge(t0);
        b.charge(t0);
        b.charge(t0); // one in debt
        assert_eq!(b.time_until(1.0, t0), Duration::from_millis(200));
        assert!(!b.take(t0 + Duration::from_millis(150)));
        assert!(b.take(t0 + Duration::from_millis(200)));
        // A shortfall too small to measure still waits a little, never zero.
        let mut c = TokenBucket::new(1_000_000_000, 1, t0);
        c.charge(t0);
        assert!(c.time_until(1.0, t0) >= Duration::from_millis(1));
    }
}
