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
    /// Refusals in the current flood window (see [`TokenBucket::flooding`]).
    pub refused: u32,
    window_start: Instant,
}

/// The window over which refusals are counted to detect a flood.
pub const FLOOD_WINDOW: Duration = Duration::from_secs(1);

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: now,
            refused: 0,
            window_start: now,
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
            true
        } else {
            if now.saturating_duration_since(self.window_start) >= FLOOD_WINDOW {
                self.window_start = now;
                self.refused = 0;
            }
            self.refused += 1;
            false
        }
    }

    /// Whether the sender is flooding: more than a whole burst of frames refused within
    /// one [`FLOOD_WINDOW`]. Counted over time, not as consecutive refusals, so a
    /// flood fast enough to win a refilled token now and then is still seen (a client
    /// that paces to the budget is never refused at all).
    pub fn flooding(&self) -> bool {
        self.refused > self.burst()
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
    fn a_flood_that_wins_a_token_now_and_then_is_still_a_flood() {
        let t0 = Instant::now();
        // 50/s with a burst of 200, flooded at 10,000 frames/s: a token refills every
        // 20 ms, so refusals are never more than 200 in a row.
        let mut b = TokenBucket::new(50, 200, t0);
        let mut flooding_at = None;
        for i in 0..20_000u64 {
            let now = t0 + Duration::from_micros(100 * i);
            b.take(now);
            if b.flooding() {
                flooding_at = Some(now - t0);
                break;
            }
        }
        let at = flooding_at.expect("a 10,000 frames/s flood is detected");
        assert!(at < Duration::from_millis(100), "detected after {at:?}");
        // A client just over its budget (60/s) is refused now and then, never a flood.
        let mut c = TokenBucket::new(50, 200, t0);
        for i in 0..600u64 {
            c.take(t0 + Duration::from_micros(16_667 * i));
            assert!(!c.flooding());
        }
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
