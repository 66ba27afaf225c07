//! Reconnect back-off.
//!
//! When a connection drops, every client of a server tends to notice at the same moment
//! (server restart, a cell tower hand-over). Reconnecting on a fixed schedule makes them
//! arrive together, again and again. Exponential back-off with *full jitter* (each
//! delay uniform in `[0, min(cap, base * 2^attempt)]`) spreads them out.
//!
//! The attempt counter resets only after a connection stayed up `stable_after`, so a
//! server that accepts and immediately drops connections does not reset it. An explicit
//! [`Backoff::network_changed`] (Wi-Fi to cellular, reported by the app) asks for an
//! immediate attempt: the old failures say nothing about the new path.
//!
//! The random source is seeded by the caller, so the simulator is reproducible.

use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Configuration of a [`Backoff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Upper bound of the first delay.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
    /// A connection that lasted this long resets the attempt counter.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
            stable_after: Duration::from_secs(30),
        }
    }
}

impl BackoffConfig {
    /// The ceiling of the delay after `attempt` failed attempts: `base * 2^attempt`,
    /// capped. (Also used by retry loops that keep their attempt count elsewhere, such
    /// as the server's webhook outbox.)
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Reconnect delay state for one client.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    connected_at: Option<Instant>,
    rng: SmallRng,
}

impl Backoff {
    /// A fresh state (next delay drawn from `[0, base]`).
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Backoff {
            config,
            attempt: 0,
            connected_at: None,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Failed attempts since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay.
    pub fn ceiling(&self) -> Duration {
        self.config.ceiling(self.attempt)
    }

    /// The delay before the next attempt; counts the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = ceiling.as_nanos() as u64;
        Duration::from_nanos(self.rng.random_range(0..=nanos))
    }

    /// The connection (and login) succeeded at `now`.
    pub fn on_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// The connection was lost at `now`. Resets the counter if it had been stable.
    pub fn on_disconnected(&mut self, now: Instant) {
        if let Some(at) = self.connected_at.take() {
            if now.saturating_duration_since(at) >= self.config.stable_after {
                self.attempt = 0;
            }
        }
    }

    /// The app reported a new network: reset and return a zero delay (try at once).
    pub fn network_changed(&mut self) -> Duration {
        self.attempt = 0;
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_full_jitter_to_the_cap_and_resets_when_stable() {
        let cfg = BackoffConfig {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            stable_after: Duration::from_secs(10),
        };
        let mut b = Backoff::new(cfg, 7);
        let ceilings: Vec<u64> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d <= c);
                c.as_millis() as u64
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        let t0 = Instant::now();
        b.on_connected(t0);
        b.on_disconnected(t0 + Duration::from_secs(1));
        assert_eq!(b.attempt(), 8, "a short-lived connection does not reset");
        b.on_connected(t0);
        b.on_disconnected(t0 + Duration::from_secs(11));
        assert_eq!(b.attempt(), 0);
        b.next_delay();
        assert_eq!(b.network_changed(), Duration::ZERO);
        assert_eq!(b.attempt(), 0);
    }

    #[test]
    fn delays_are_spread_and_reproducible() {
        let cfg = BackoffConfig::default();
        let draw = |seed| {
            let mut b = Backoff::new(cfg.clone(), seed);
            (0..6).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
        // Many clients failing at once: first delays cover [0, base] rather than one instant.
        let firsts: Vec<Duration> = (0..1000)
            .map(|s| Backoff::new(cfg.clone(), s).next_delay())
            .collect();
        let early = firsts.iter().filter(|d| **d < cfg.base / 2).count();
        assert!(
            (350..650).contains(&early),
            "{early} of 1000 in the first half"
        );
    }
}
