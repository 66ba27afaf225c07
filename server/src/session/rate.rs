//! The per-session rate limit: a token bucket over every frame a client sends.

use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug)]
pub(super) struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    /// Consecutive refusals.
    pub refused: u32,
}

impl TokenBucket {
    /// A full bucket.
    pub(super) fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: now,
            refused: 0,
        }
    }

    /// Takes one token if there is one.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
}
