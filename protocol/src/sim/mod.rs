//! A deterministic network simulator for the sans-IO state machines.
//!
//! Real networks cannot be made lossy on demand on every machine (no `netem` here), and
//! real time makes tests slow and flaky. The simulator runs peers over [`Link`]s with
//! seeded loss, delay, jitter, reordering, duplication and blackout windows, in virtual
//! time: an [`EventQueue`] orders deliveries and timers, and "now" jumps straight to the
//! next event. The same seed gives the same run, bit for bit.
//!
//! Two scenarios are ready-made because tests and benchmarks both need them:
//! [`qos`] (one sender, one receiver, N messages, delivery-time distribution) and
//! [`heartbeat`] (an idle client behind a NAT with a given mapping timeout).

pub mod heartbeat;
pub mod qos;

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Impairments of one direction of a path.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// Probability that a packet is dropped.
    pub loss: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Uniform extra delay in `[0, jitter]` (jitter alone reorders packets too).
    pub jitter: Duration,
    /// Probability that a packet is held back by an extra `reorder_delay`.
    pub reorder: f64,
    /// Extra delay of a reordered packet.
    pub reorder_delay: Duration,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Windows `(start, length)`, relative to the simulation start, in which every
    /// packet is dropped.
    pub blackouts: Vec<(Duration, Duration)>,
    /// Bandwidth in bytes per second (`None`: unlimited). Packets queue behind each
    /// other, so a full link adds delay.
    pub rate: Option<u64>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            delay: Duration::from_millis(50),
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::from_millis(30),
            duplicate: 0.0,
            blackouts: vec![],
            rate: None,
        }
    }
}

impl LinkConfig {
    /// A link with the given loss and one-way delay.
    pub fn lossy(loss: f64, one_way: Duration) -> Self {
        LinkConfig {
            loss,
            delay: one_way,
            ..LinkConfig::default()
        }
    }
}

/// Counters of a [`Link`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Packets offered to the link.
    pub sent: u64,
    /// Bytes offered to the link.
    pub bytes: u64,
    /// Packets dropped by random loss.
    pub lost: u64,
    /// Packets dropped in a blackout.
    pub blacked_out: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Packets held back for reordering.
    pub reordered: u64,
}

/// One direction of a simulated path.
#[derive(Debug, Clone)]
pub struct Link {
    config: LinkConfig,
    start: Instant,
    rng: SmallRng,
    stats: LinkStats,
    /// When the bandwidth-limited link is free again.
    free_at: Instant,
}

impl Link {
    /// A link whose blackout windows are relative to `start`.
    pub fn new(config: LinkConfig, start: Instant, seed: u64) -> Self {
        Link {
            config,
            start,
            rng: SmallRng::seed_from_u64(seed),
            stats: LinkStats::default(),
            free_at: start,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Sends a packet of `len` bytes at `now`; returns the arrival times of the copies
    /// that survive (none, one, or two when duplicated).
    pub fn transmit(&mut self, now: Instant, len: usize) -> Vec<Instant> {
        self.stats.sent += 1;
        self.stats.bytes += len as u64;
        let since = now.saturating_duration_since(self.start);
        if self
            .config
            .blackouts
            .iter()
            .any(|(s, l)| since >= *s && since < *s + *l)
        {
            self.stats.blacked_out += 1;
            return vec![];
        }
        if self.rng.random_bool(self.config.loss.clamp(0.0, 1.0)) {
            self.stats.lost += 1;
            return vec![];
        }
        let copies = if self.rng.random_bool(self.config.duplicate.clamp(0.0, 1.0)) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        // Serialisation on a bandwidth-limited link: wait for the link, then occupy it.
        let departs = match self.config.rate {
            Some(rate) if rate > 0 => {
                let departs = self.free_at.max(now);
                self.free_at = departs + Duration::from_secs_f64(len as f64 / rate as f64);
                self.free_at
            }
            _ => now,
        };
        (0..copies).map(|_| departs + self.one_way()).collect()
    }

    fn one_way(&mut self) -> Duration {
        let mut d = self.config.delay;
        if !self.config.jitter.is_zero() {
            d += self.config.jitter.mul_f64(self.rng.random::<f64>());
        }
        if self.rng.random_bool(self.config.reorder.clamp(0.0, 1.0)) {
            self.stats.reordered += 1;
            d += self.config.reorder_delay;
        }
        d
    }
}

struct Scheduled<E> {
    at: Instant,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Events ordered by time; ties keep insertion order (determinism).
pub struct EventQueue<E> {
    heap: BinaryHeap<Reverse<Scheduled<E>>>,
    seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// Schedules `event` at `at`.
    pub fn push(&mut self, at: Instant, event: E) {
        self.seq += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            event,
        }));
    }

    /// Time of the earliest event.
    pub fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|r| r.0.at)
    }

    /// Removes the earliest event.
    pub fn pop(&mut self) -> Option<(Instant, E)> {
        self.heap.pop().map(|Reverse(s)| (s.at, s.event))
    }

    /// Number of pending events.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Percentile (nearest-rank) of a sorted slice; `None` when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_impairments_match_their_rates() {
        let t0 = Instant::now();
        let cfg = LinkConfig {
            loss: 0.3,
            duplicate: 0.1,
            reorder: 0.2,
            blackouts: vec![(Duration::from_secs(10), Duration::from_secs(5))],
            ..LinkConfig::default()
        };
        let mut link = Link::new(cfg, t0, 42);
        let mut delivered = 0;
        for i in 0..100_000u64 {
            let now = t0 + Duration::from_micros(i * 100); // 10 s of traffic
            delivered += link.transmit(now, 10).len();
        }
        assert!(
            link.transmit(t0 + Duration::from_secs(12), 10).is_empty(),
            "blackout drops"
        );
        let s = link.stats();
        assert!((29_000..31_000).contains(&s.lost), "{s:?}");
        assert!((6_500..7_500).contains(&s.duplicated), "{s:?}"); // 10% of the 70% kept
        assert_eq!(delivered as u64, 100_000 - s.lost + s.duplicated);
    }

    #[test]
    fn a_rate_limit_queues_packets() {
        let t0 = Instant::now();
        let cfg = LinkConfig {
            delay: Duration::ZERO,
            rate: Some(1000),
            ..LinkConfig::default()
        };
        let mut link = Link::new(cfg, t0, 1);
        let arrivals: Vec<Duration> = (0..3).map(|_| link.transmit(t0, 100)[0] - t0).collect();
        assert_eq!(
            arrivals,
            vec![
                Duration::from_millis(100),
                Duration::from_millis(200),
                Duration::from_millis(300)
            ]
        );
    }

    #[test]
    fn queue_is_time_ordered_and_stable() {
        let t0 = Instant::now();
        let mut q = EventQueue::default();
        q.push(t0 + Duration::from_secs(2), "c");
        q.push(t0 + Duration::from_secs(1), "a");
        q.push(t0 + Duration::from_secs(1), "b");
        let order: Vec<&str> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, vec!["a", "b", "c"]);
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v, 100.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
