//! The receiver's duplicate filter.
//!
//! At-least-once transmission means a receiver sees some messages twice: the ACK was
//! lost and the sender retransmitted, or the network duplicated a datagram. The filter
//! remembers recently seen message ids so duplicates are dropped (and re-ACKed) before
//! anything reaches storage or the app.
//!
//! ## The window (what is guaranteed)
//! An id is remembered for at least `ttl` after it was first seen, unless more than
//! `capacity` ids arrived in that time, in which case the oldest are forgotten first
//! (each such early eviction is counted in [`DuplicateFilter::early_evictions`]).
//! A sender stops retransmitting an id `give_up` after its first transmission
//! ([`crate::qos::AdaptiveConfig::give_up`], 120 s by default), so with
//! `ttl >= give_up + maximum path delay` every retransmission is caught as long as
//! the capacity is not exceeded. The defaults (`ttl` 180 s, 16,384 ids) hold about 90
//! messages per second from one peer; beyond that the durable layers behind the filter
//! (the server's idempotent store keyed by client message id, the client's unique
//! index and seq cursor) still make delivery exactly-once: the filter is the cheap
//! first line, not the only one.
//!
//! Memory is bounded by `capacity` entries (a hash set and a FIFO of (time, id)).

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Configuration of a [`DuplicateFilter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupConfig {
    /// Most ids remembered at once.
    pub capacity: usize,
    /// How long an id is remembered (if capacity allows).
    pub ttl: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            capacity: 16_384,
            ttl: Duration::from_secs(180),
        }
    }
}

/// Bounded, time-windowed set of recently seen ids.
#[derive(Debug, Clone)]
pub struct DuplicateFilter<K> {
    config: DedupConfig,
    seen: HashSet<K>,
    fifo: VecDeque<(Instant, K)>,
    early_evictions: u64,
    duplicates: u64,
}

impl<K: Copy + Eq + Hash> DuplicateFilter<K> {
    /// An empty filter.
    ///
    /// # Panics
    /// If `capacity` is zero.
    pub fn new(config: DedupConfig) -> Self {
        assert!(
            config.capacity > 0,
            "duplicate filter capacity must be positive"
        );
        DuplicateFilter {
            seen: HashSet::with_capacity(config.capacity.min(1024)),
            fifo: VecDeque::with_capacity(config.capacity.min(1024)),
            config,
            early_evictions: 0,
            duplicates: 0,
        }
    }

    /// Records `id` seen at `now`. Returns `true` the first time (deliver it) and
    /// `false` for a duplicate within the window (drop it, but ACK again).
    pub fn insert(&mut self, id: K, now: Instant) -> bool {
        self.expire(now);
        if self.seen.contains(&id) {
            self.duplicates += 1;
            return false;
        }
        if self.fifo.len() == self.config.capacity {
            let (_, old) = self.fifo.pop_front().expect("capacity > 0");
            self.seen.remove(&old);
            self.early_evictions += 1;
        }
        self.seen.insert(id);
        self.fifo.push_back((now, id));
        true
    }

    /// Whether `id` is currently remembered.
    pub fn contains(&self, id: &K) -> bool {
        self.seen.contains(id)
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.fifo.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.fifo.is_empty()
    }

    /// Ids forgotten before their ttl because the capacity was reached.
    pub fn early_evictions(&self) -> u64 {
        self.early_evictions
    }

    /// Duplicates dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.fifo.front() {
            if now.saturating_duration_since(t) < self.config.ttl {
                break;
            }
            self.fifo.pop_front();
            self.seen.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_duplicates_within_window_and_forgets_after() {
        let t0 = Instant::now();
        let mut f = DuplicateFilter::new(DedupConfig {
            capacity: 3,
            ttl: Duration::from_secs(10),
        });
        assert!(f.insert(1, t0));
        assert!(!f.insert(1, t0 + Duration::from_secs(9)));
        assert!(
            f.insert(1, t0 + Duration::from_secs(10)),
            "forgotten after ttl"
        );
        assert!(f.insert(2, t0 + Duration::from_secs(10)));
        assert!(f.insert(3, t0 + Duration::from_secs(10)));
        assert!(f.insert(4, t0 + Duration::from_secs(10)));
        assert_eq!(f.early_evictions(), 1);
        assert!(!f.contains(&1));
        assert_eq!(f.len(), 3);
        assert_eq!(f.duplicates(), 1);
    }
}
