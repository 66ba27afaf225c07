//! The sender side of Tern's application-level QoS.
//!
//! QUIC already retransmits lost packets, so why another layer? Because the promise
//! Tern makes is end to end: "the server stored it" and "the recipient's device stored
//! it". Those facts only come back as application ACKs ([`SendResult`], [`DeliveryAck`]),
//! and the layer that waits for them must survive a connection that silently died, a
//! datagram path that drops, and a reconnect. This module decides *when* to send a
//! message again and *when* to give up and tell the app; the caller does the sending.
//!
//! ## The adaptive schedule (default)
//! Taken from the delivery-retry design in the reference articles, with RFC 6298 timers:
//!
//! 1. **Fast phase.** The first `fast_retries` retransmissions are spaced by the
//!    retransmission timeout (RTO = SRTT + 4·RTTVAR, clamped to `[rto_min, rto_max]`,
//!    `rto_initial` before any sample). RTT samples come from ACKs of messages sent
//!    once (Karn's rule) and from heartbeats ([`Sender::on_rtt_sample`]).
//! 2. **Slow phase.** Then each interval is the previous one plus a fixed `step`, up to
//!    `max_interval`: a phone in a tunnel is not hammered every RTO.
//! 3. **Remembered recovery.** Each slow-phase retransmission records its interval as
//!    the peer's *recovery hint*; the next message that reaches its slow phase starts
//!    from the hint instead of from the RTO. So a long outage is learned once, not
//!    re-learned per message.
//! 4. **Recovery.** An ACK that arrives while a hint is set proves the path works
//!    again: the hint is cleared and every message waiting in its slow phase is
//!    retransmitted at once and restarts its fast phase, instead of sleeping out an
//!    interval of up to `max_interval` on a path that is already back.
//! 5. **Give up.** A message not acknowledged within `give_up` of its first
//!    transmission is reported as [`SenderEvent::Failed`]; it is never dropped silently.
//!
//! ## The MobileIMSDK baseline
//! [`Schedule::Fixed`] reproduces MobileIMSDK's `QoS4SendDaemon`: a scan every 5 s,
//! messages younger than 3 s are skipped, each older one is resent, and once it was
//! resent twice the next scan reports it lost. It exists so benchmarks can run both
//! schedules on the same seeds.
//!
//! ## Bounds
//! At most `window` messages are pending; [`Sender::try_send`] refuses more with
//! [`SendError::WindowFull`] (backpressure: the caller keeps them queued, e.g. in the
//! persisted outbox). Memory is O(window).
//!
//! [`SendResult`]: crate::pb::SendResult
//! [`DeliveryAck`]: crate::pb::DeliveryAck

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Timer retransmissions a sender makes per RTO while its peer answers nothing (each
/// answer allows two more). A peer that stalls (a store's checkpoint, a busy CPU) with a
/// full window in flight then gets a few probes per RTO instead of a copy of every
/// message, which it would have to turn away one by one when it comes back. On a lossy
/// path answers keep coming, and with them the copies; in an outage the probes go on,
/// so the path's return is found.
pub const COPIES_WITHOUT_ANSWERS: usize = 8;

/// A timed-out message is taken as queued at the peer (not copied) only with at least
/// this many messages still unanswered ahead of it. A queue is many messages deep; a
/// sparse stream on a lossy path has a few in flight, and there a slow answer means a
/// lost packet was repaired, not a queue (`tern-bench loss`, 30 % / 100 ms: without this
/// bound the pushes' timers waited in 4 runs of 10, p50 of the downlink 175-587 ms
/// against 3-7 ms, p99 of the whole trip 1,974-2,681 ms against 719-963).
pub const QUEUED_BEHIND: usize = 8;

/// Smoothed round-trip time estimator (RFC 6298).
#[derive(Debug, Clone, Default)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    latest: Option<Duration>,
    min: Option<Duration>,
}

impl RttEstimator {
    /// Feeds one measured round trip.
    pub fn on_sample(&mut self, rtt: Duration) {
        self.latest = Some(rtt);
        self.min = Some(self.min.map_or(rtt, |m| m.min(rtt)));
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// Smoothed RTT, if any sample was seen.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// The most recent sample.
    pub fn latest(&self) -> Option<Duration> {
        self.latest
    }

    /// The smallest sample since the path began ([`RttEstimator::new_path`]): the
    /// path's own delay, without any queue's.
    pub fn min(&self) -> Option<Duration> {
        self.min
    }

    /// A new path (a new connection): its smallest RTT is learned again.
    pub fn new_path(&mut self) {
        self.min = None;
    }

    /// RTO = SRTT + 4·RTTVAR clamped to `[min, max]`, or `initial` before any sample.
    pub fn rto(&self, initial: Duration, min: Duration, max: Duration) -> Duration {
        match self.srtt {
            None => initial.clamp(min, max),
            Some(srtt) => (srtt + self.rttvar * 4).clamp(min, max),
        }
    }
}

/// Parameters of the adaptive schedule. See the module docs for the reasoning.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConfig {
    /// RTO before the first RTT sample (RFC 6298 says 1 s).
    pub rto_initial: Duration,
    /// Floor for the RTO: below ~200 ms, delayed ACKs and scheduling noise on phones
    /// cause spurious retransmissions.
    pub rto_min: Duration,
    /// Ceiling for the RTO used in the fast phase.
    pub rto_max: Duration,
    /// Retransmissions spaced by the RTO before the slow phase (the reference design
    /// found the 5th and later fixed retries rarely succeed).
    pub fast_retries: u32,
    /// Growth of the interval per slow-phase retransmission.
    pub step: Duration,
    /// Cap of the slow-phase interval.
    pub max_interval: Duration,
    /// Time after the first transmission at which the message is reported failed.
    pub give_up: Duration,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        AdaptiveConfig {
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(3),
            fast_retries: 4,
            step: Duration::from_secs(1),
            max_interval: Duration::from_secs(8),
            give_up: Duration::from_secs(120),
        }
    }
}

/// Parameters of MobileIMSDK's fixed schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedConfig {
    /// Period of the resend scan (MobileIMSDK: 5 s).
    pub scan_interval: Duration,
    /// Messages younger than this are skipped by a scan (MobileIMSDK: 3 s).
    pub min_age: Duration,
    /// Resends before the message is reported lost (MobileIMSDK: 2).
    pub max_retries: u32,
}

impl Default for FixedConfig {
    fn default() -> Self {
        FixedConfig {
            scan_interval: Duration::from_secs(5),
            min_age: Duration::from_secs(3),
            max_retries: 2,
        }
    }
}

/// Which retransmission schedule a [`Sender`] follows.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Tern's RTT-driven schedule.
    Adaptive(AdaptiveConfig),
    /// MobileIMSDK's fixed scan, for comparison.
    Fixed(FixedConfig),
}

/// Configuration of a [`Sender`].
#[derive(Debug, Clone, PartialEq)]
pub struct QosConfig {
    /// The retransmission schedule.
    pub schedule: Schedule,
    /// Maximum number of unacknowledged messages.
    pub window: usize,
    /// Whether to retransmit within one connection (adaptive schedule). `true` when the
    /// frames travel unreliably (datagrams, the simulator). `false` when they travel on a
    /// reliable stream: the transport already repairs losses, and writing copies into a
    /// congested stream only makes it worse; the engine then keeps the window, reports
    /// give-up and resends everything on a new connection ([`Sender::on_reconnect`]).
    pub retransmit: bool,
}

impl Default for QosConfig {
    fn default() -> Self {
        QosConfig {
            schedule: Schedule::Adaptive(AdaptiveConfig::default()),
            window: 256,
            retransmit: true,
        }
    }
}

impl QosConfig {
    /// MobileIMSDK's schedule with the same window, for side-by-side comparisons.
    pub fn mobileimsdk() -> Self {
        QosConfig {
            schedule: Schedule::Fixed(FixedConfig::default()),
            window: 1_000_000,
            retransmit: true,
        }
    }

    /// For a client's sends in datagrams: a send is settled only when its answer comes
    /// back (a round trip through two lossy directions, where a push needs one), so
    /// the timer floor is lower (100 ms) and the fast phase longer (8 retries) than for
    /// pushes. Measured against the default in docs/bench/analysis.md ("The uplink
    /// under loss"): at 30 % loss each way this brought the uplink p99 from 940 to
    /// 647 ms (100 ms RTT) and from 3,584 to 2,006 ms (300 ms RTT).
    pub fn uplink() -> Self {
        QosConfig {
            schedule: Schedule::Adaptive(AdaptiveConfig {
                rto_min: Duration::from_millis(100),
                fast_retries: 8,
                ..AdaptiveConfig::default()
            }),
            ..QosConfig::default()
        }
    }

    /// For frames sent on a reliable stream: no retransmission within a connection.
    pub fn over_reliable_stream() -> Self {
        QosConfig {
            retransmit: false,
            ..QosConfig::default()
        }
    }
}

/// What the caller must do after [`Sender::handle_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderEvent<K> {
    /// Transmit this message again (set the retransmit flag).
    Retransmit(K),
    /// The message could not be delivered; tell the app. It is no longer tracked.
    Failed {
        /// The message.
        key: K,
        /// How many times it was transmitted.
        transmissions: u32,
        /// Time since its first transmission.
        elapsed: Duration,
    },
}

/// A message's acknowledgement, as returned by [`Sender::on_ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Acked {
    /// How many times it was transmitted.
    pub transmissions: u32,
    /// Time from first transmission to the ACK.
    pub elapsed: Duration,
    /// The RTT sample taken (only for messages transmitted once: Karn's rule).
    pub rtt_sample: Option<Duration>,
}

/// Why [`Sender::try_send`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// `window` messages are already pending: keep this one queued and retry after an ACK.
    #[error("send window full ({0} messages pending)")]
    WindowFull(usize),
    /// A message with this key is already pending.
    #[error("message already pending")]
    AlreadyPending,
}

#[derive(Debug, Clone)]
struct Entry<P> {
    /// What the caller retransmits (the encoded-to-be frame); `()` when the caller
    /// keeps it elsewhere.
    payload: P,
    serial: u64,
    first_sent: Instant,
    /// The latest transmission.
    last_sent: Instant,
    /// The latest transmission's number among all of this sender's transmissions.
    tx: u64,
    /// The number of the earliest transmission an answer may be to: the first, or the
    /// first on the current connection.
    earliest_tx: u64,
    /// Its answer may measure something other than the path (it waited at the peer
    /// behind another message): take no RTT sample from it.
    no_sample: bool,
    transmissions: u32,
    /// Retransmissions since the current fast phase began.
    phase_retransmissions: u32,
    /// Current slow-phase interval, once the message reached the slow phase.
    slow_interval: Option<Duration>,
    /// When this entry's timer fires (adaptive schedule only).
    deadline: Option<Instant>,
}

/// Tracks unacknowledged messages to one peer and schedules their retransmission.
///
/// `K` is the message key: the client message id for client sends, the inbox seq
/// for server pushes, a counter in the simulator. `P` is the payload the engine keeps
/// for each pending message ([`Sender::payload`]), so a driver needs no side map that
/// must be updated in step with the engine's.
#[derive(Debug)]
pub struct Sender<K, P = ()> {
    config: QosConfig,
    rtt: RttEstimator,
    recovery_hint: Option<Duration>,
    entries: HashMap<K, Entry<P>>,
    /// Insertion order (serial -> key): scans and reconnect resends keep send order.
    order: BTreeMap<u64, K>,
    /// Adaptive timers, earliest first.
    timers: BTreeSet<(Instant, u64)>,
    next_serial: u64,
    /// Transmissions so far (first ones and retransmissions): each entry's `tx`.
    transmissions: u64,
    /// The highest `tx` an acknowledgement answered; when the latest ACK came, and how
    /// long after its message's latest transmission. A timed-out message is *queued* at
    /// the peer, not lost, when those say the peer is answering slowly (see `queued`).
    acked_tx: u64,
    last_ack: Option<Instant>,
    last_lag: Duration,
    /// Timer retransmissions the sender may make now: [`COPIES_WITHOUT_ANSWERS`] at
    /// least once per RTO, two more per answer, at most the window. Copies are clocked
    /// by answers.
    copy_tokens: usize,
    /// When `copy_tokens` is next raised to [`COPIES_WITHOUT_ANSWERS`] if lower.
    copy_refill: Option<Instant>,
    /// Fixed schedule: scans happen at `epoch + k * scan_interval`.
    epoch: Instant,
    next_scan: Instant,
    events: VecDeque<SenderEvent<K>>,
    /// Payloads of the messages reported [`SenderEvent::Failed`] by the last
    /// [`Sender::handle_timeout`], until taken.
    failed: Vec<(K, P)>,
    stats: SenderStats,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Messages accepted by `try_send`.
    pub sent: u64,
    /// Retransmissions requested.
    pub retransmissions: u64,
    /// Messages acknowledged.
    pub acked: u64,
    /// Messages reported failed.
    pub failed: u64,
    /// Timeouts that did not retransmit: the peer was still answering older messages.
    pub waited: u64,
}

impl<K: Copy + Eq + Hash + Debug> Sender<K, ()> {
    /// Registers a message the caller is transmitting now for the first time (no payload
    /// kept: see [`Sender::try_send_with`]).
    pub fn try_send(&mut self, key: K, now: Instant) -> Result<(), SendError> {
        self.try_send_with(key, (), now)
    }
}

impl<K: Copy + Eq + Hash + Debug, P> Sender<K, P> {
    /// Turns retransmission within a connection on or off (the client moving between
    /// QUIC, where it retransmits, and a reliable stream, where it does not).
    pub fn set_retransmit(&mut self, on: bool) {
        self.config.retransmit = on;
    }

    /// A sender with no RTT knowledge yet. `now` anchors the fixed schedule's scans.
    pub fn new(config: QosConfig, now: Instant) -> Self {
        let next_scan = match &config.schedule {
            Schedule::Fixed(f) => now + f.scan_interval,
            Schedule::Adaptive(_) => now,
        };
        Sender {
            config,
            rtt: RttEstimator::default(),
            recovery_hint: None,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            timers: BTreeSet::new(),
            next_serial: 0,
            transmissions: 0,
            acked_tx: 0,
            last_ack: None,
            last_lag: Duration::ZERO,
            copy_tokens: COPIES_WITHOUT_ANSWERS,
            copy_refill: None,
            epoch: now,
            next_scan,
            events: VecDeque::new(),
            failed: Vec::new(),
            stats: SenderStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QosConfig {
        &self.config
    }

    /// Number of unacknowledged messages.
    pub fn in_flight(&self) -> usize {
        self.entries.len()
    }

    /// Whether `try_send` would accept another message.
    pub fn has_room(&self) -> bool {
        self.entries.len() < self.config.window
    }

    /// Whether `key` is pending.
    pub fn is_pending(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// The payload of a pending message (what to retransmit for a
    /// [`SenderEvent::Retransmit`] or after [`Sender::on_reconnect`]).
    pub fn payload(&self, key: &K) -> Option<&P> {
        self.entries.get(key).map(|e| &e.payload)
    }

    /// The pending keys, in send order (for cumulative ACKs such as `DeliveryAck`).
    pub fn pending(&self) -> impl Iterator<Item = &K> {
        self.order.values()
    }

    /// The RTT estimator.
    pub fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }

    /// Counters since creation.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// The remembered slow-phase interval for this peer, if an outage is in progress.
    pub fn recovery_hint(&self) -> Option<Duration> {
        self.recovery_hint
    }

    /// The current retransmission timeout (adaptive schedule; the scan interval otherwise).
    pub fn rto(&self) -> Duration {
        match &self.config.schedule {
            Schedule::Adaptive(a) => self.rtt.rto(a.rto_initial, a.rto_min, a.rto_max),
            Schedule::Fixed(f) => f.scan_interval,
        }
    }

    /// Feeds an RTT measured elsewhere (e.g. a heartbeat round trip).
    pub fn on_rtt_sample(&mut self, rtt: Duration) {
        self.rtt.on_sample(rtt);
    }

    /// Registers a message the caller is transmitting now for the first time, keeping
    /// `payload` until it is acknowledged, cancelled or failed.
    pub fn try_send_with(&mut self, key: K, payload: P, now: Instant) -> Result<(), SendError> {
        if self.entries.contains_key(&key) {
            return Err(SendError::AlreadyPending);
        }
        if !self.has_room() {
            return Err(SendError::WindowFull(self.entries.len()));
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        let tx = self.next_tx();
        let mut entry = Entry {
            payload,
            serial,
            first_sent: now,
            last_sent: now,
            tx,
            earliest_tx: tx,
            no_sample: false,
            transmissions: 1,
            phase_retransmissions: 0,
            slow_interval: None,
            deadline: None,
        };
        self.arm(&mut entry, now);
        self.entries.insert(key, entry);
        self.order.insert(serial, key);
        self.stats.sent += 1;
        Ok(())
    }

    /// The peer acknowledged `key`. Returns `None` for unknown (already acked, failed
    /// or never sent) keys, which the caller may ignore: duplicate ACKs are normal.
    pub fn on_ack(&mut self, key: K, now: Instant) -> Option<Acked> {
        let entry = self.entries.remove(&key)?;
        self.forget(&entry);
        // Which transmission the answer is to is known only when there was one on this
        // connection (Karn's rule). An answer to a message sent more than once proves
        // only that its earliest transmission was handled, and says nothing of the lag:
        // taken as the latest, a queued burst's copies answered by their originals made
        // every older message look lost, and every copy made the next ones look fast
        // (`tern-bench wire`, pipelined, on a slower VM: 3-4 copies of each message).
        let unambiguous = entry.earliest_tx == entry.tx;
        self.acked_tx = self.acked_tx.max(entry.earliest_tx);
        self.last_ack = Some(now);
        if unambiguous {
            self.last_lag = now.saturating_duration_since(entry.last_sent);
        }
        self.copy_tokens = (self.copy_tokens + 2).min(self.most_copies());
        let elapsed = now.saturating_duration_since(entry.first_sent);
        let rtt_sample = (entry.transmissions == 1 && !entry.no_sample).then_some(elapsed);
        if let Some(s) = rtt_sample {
            self.rtt.on_sample(s);
        }
        // The path delivered something: the outage, if any, is over.
        if self.recovery_hint.take().is_some() {
            // Every waiting message goes again at once: the answer proved the path.
            self.copy_tokens = self.most_copies();
            self.recover(now);
        }
        self.stats.acked += 1;
        Some(Acked {
            transmissions: entry.transmissions,
            elapsed,
            rtt_sample,
        })
    }

    /// Stops tracking `key` without reporting it (the app cancelled it).
    pub fn cancel(&mut self, key: &K) -> bool {
        match self.entries.remove(key) {
            Some(entry) => {
                self.forget(&entry);
                true
            }
            None => false,
        }
    }

    /// The peer reported `key` missing (it received something sent after it): when the
    /// latest transmission is at least three quarters of the smoothed RTT old, it is
    /// taken as lost and the caller must transmit it again now, without waiting out its
    /// timer (QUIC's "later packet acknowledged" rule; the age check keeps a burst of
    /// reports from causing a burst of copies). Returns whether to retransmit.
    pub fn retransmit_lost(&mut self, key: &K, now: Instant) -> bool {
        if !self.config.retransmit {
            return false;
        }
        let srtt = self.rtt.srtt().unwrap_or(Duration::from_millis(100));
        let Some(mut entry) = self.entries.remove(key) else {
            return false;
        };
        let lost = now.saturating_duration_since(entry.last_sent) >= srtt * 3 / 4;
        if lost {
            if let Some(d) = entry.deadline.take() {
                self.timers.remove(&(d, entry.serial));
            }
            entry.transmissions += 1;
            entry.last_sent = now;
            entry.tx = self.next_tx();
            self.arm(&mut entry, now);
            self.stats.retransmissions += 1;
        }
        self.entries.insert(*key, entry);
        lost
    }

    /// The answer to `key` may wait at the peer behind an earlier message (the peer
    /// restores an order): it gives no RTT sample, which would otherwise count the wait
    /// as path delay and stretch every retransmission timer.
    pub fn skip_rtt_sample(&mut self, key: &K) {
        if let Some(e) = self.entries.get_mut(key) {
            e.no_sample = true;
        }
    }

    /// The peer has `key` but cannot answer it yet (it waits for an earlier message):
    /// its retransmission timer is pushed out to the fast phase's ceiling, so waiting
    /// for a gap does not make the sender resend everything behind it.
    pub fn on_held(&mut self, key: &K, now: Instant) {
        let Schedule::Adaptive(a) = &self.config.schedule else {
            return;
        };
        if !self.config.retransmit {
            return;
        }
        let later = now + a.rto_max;
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.no_sample = true;
        let deadline = later.min(entry.first_sent + a.give_up);
        if let Some(d) = entry.deadline.replace(deadline) {
            self.timers.remove(&(d, entry.serial));
        }
        self.timers.insert((deadline, entry.serial));
    }

    /// A new connection replaced the old one: every pending message must be sent again
    /// now, in original order. Their schedules restart from the fast phase; the give-up
    /// clock does not.
    pub fn on_reconnect(&mut self, now: Instant) -> Vec<K> {
        let keys: Vec<K> = self.order.values().copied().collect();
        for key in &keys {
            let mut entry = self.entries.remove(key).expect("order and entries agree");
            if let Some(d) = entry.deadline.take() {
                self.timers.remove(&(d, entry.serial));
            }
            entry.transmissions += 1;
            entry.last_sent = now;
            entry.tx = self.next_tx();
            // Answers to the old connection's transmissions are lost with it.
            entry.earliest_tx = entry.tx;
            // A new connection is a new path: probe it from the fast phase again.
            entry.phase_retransmissions = 0;
            entry.slow_interval = None;
            self.arm(&mut entry, now);
            self.entries.insert(*key, entry);
        }
        self.recovery_hint = None;
        self.rtt.new_path();
        self.stats.retransmissions += keys.len() as u64;
        keys
    }

    /// When the caller should call [`handle_timeout`](Self::handle_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.config.schedule {
            Schedule::Adaptive(_) => self.timers.first().map(|(t, _)| *t),
            Schedule::Fixed(_) => (!self.entries.is_empty()).then_some(self.next_scan),
        }
    }

    /// The payload of a message just reported [`SenderEvent::Failed`] (kept until the
    /// next [`handle_timeout`](Self::handle_timeout)), for a caller that wants to keep it.
    pub fn take_failed(&mut self, key: &K) -> Option<P> {
        let i = self.failed.iter().position(|(k, _)| k == key)?;
        Some(self.failed.swap_remove(i).1)
    }

    /// Processes timers due at `now`; then drain [`poll_event`](Self::poll_event).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.failed.clear();
        match self.config.schedule.clone() {
            Schedule::Adaptive(a) => self.adaptive_timeout(&a, now),
            Schedule::Fixed(f) => self.fixed_scan(&f, now),
        }
    }

    /// The next action for the caller.
    pub fn poll_event(&mut self) -> Option<SenderEvent<K>> {
        self.events.pop_front()
    }

    /// The most timer copies the sender may have in hand: its window (every pending
    /// message once), and never fewer than a silent peer's probes.
    fn most_copies(&self) -> usize {
        self.config.window.max(COPIES_WITHOUT_ANSWERS)
    }

    /// The number of a transmission happening now.
    fn next_tx(&mut self) -> u64 {
        self.transmissions += 1;
        self.transmissions
    }

    /// Whether a timed-out `entry` is queued at the peer rather than lost: it has at
    /// least [`QUEUED_BEHIND`] unanswered messages ahead of it, and all three:
    /// - nothing transmitted after the entry's latest transmission was answered (a peer
    ///   that handles messages in order — the server takes a device's sends in send
    ///   order, a client stores pushes in seq order — answers a lost message's
    ///   successors, which makes it lost at its timer as before);
    /// - answers are still coming (one within the last RTO);
    /// - and they are slow: the latest took over twice the path's smallest RTT, so the
    ///   peer is working through a queue. (Not the smoothed RTT: answers from the queue
    ///   raise it. On a long but steady path the answers take one RTT, which the RTO
    ///   already allows for: a message sent just after an answered one and not answered
    ///   by its timer is lost, and is sent again at once.)
    ///
    /// Without this, a burst whose tail waited at a busy server longer than the RTO was
    /// sent again in full at every RTO, which made the queue longer still
    /// (`tern-bench wire`, pipelined: up to 5.5 copies of each message).
    fn queued(&self, entry: &Entry<P>, now: Instant) -> bool {
        let Some(min_rtt) = self.rtt.min() else {
            return false;
        };
        let behind = self
            .order
            .range(..entry.serial)
            .nth(QUEUED_BEHIND - 1)
            .is_some();
        behind
            && entry.tx > self.acked_tx
            && self.last_lag > min_rtt * 2
            && self
                .last_ack
                .is_some_and(|t| now.saturating_duration_since(t) < self.rto())
    }

    /// Pulls every slow-phase message back to an immediate retransmission.
    fn recover(&mut self, now: Instant) {
        for entry in self.entries.values_mut() {
            if entry.slow_interval.take().is_some() {
                entry.phase_retransmissions = 0;
                if let Some(d) = entry.deadline.replace(now) {
                    self.timers.remove(&(d, entry.serial));
                }
                self.timers.insert((now, entry.serial));
            }
        }
    }

    fn forget(&mut self, entry: &Entry<P>) {
        self.order.remove(&entry.serial);
        if let Some(d) = entry.deadline {
            self.timers.remove(&(d, entry.serial));
        }
    }

    /// Sets the entry's next deadline after a transmission at `now`.
    fn arm(&mut self, entry: &mut Entry<P>, now: Instant) {
        let Schedule::Adaptive(a) = &self.config.schedule else {
            return;
        };
        if !self.config.retransmit {
            // Only the give-up clock runs.
            let deadline = entry.first_sent + a.give_up;
            entry.deadline = Some(deadline);
            self.timers.insert((deadline, entry.serial));
            return;
        }
        let rto = self.rtt.rto(a.rto_initial, a.rto_min, a.rto_max);
        let interval = if entry.phase_retransmissions < a.fast_retries {
            rto
        } else {
            let next = match entry.slow_interval {
                Some(prev) => prev + a.step,
                None => self.recovery_hint.unwrap_or(rto).max(rto) + a.step,
            };
            let next = next.min(a.max_interval);
            entry.slow_interval = Some(next);
            next
        };
        let deadline = (now + interval).min(entry.first_sent + a.give_up);
        entry.deadline = Some(deadline);
        self.timers.insert((deadline, entry.serial));
    }

    fn adaptive_timeout(&mut self, a: &AdaptiveConfig, now: Instant) {
        if self.copy_refill.is_none_or(|at| at <= now) {
            self.copy_tokens = self.copy_tokens.max(COPIES_WITHOUT_ANSWERS);
            self.copy_refill = Some(now + self.rto());
        }
        while let Some(&(deadline, serial)) = self.timers.first() {
            if deadline > now {
                break;
            }
            self.timers.pop_first();
            let key = self.order[&serial];
            let mut entry = self.entries.remove(&key).expect("timer for a live entry");
            entry.deadline = None;
            if now.saturating_duration_since(entry.first_sent) >= a.give_up {
                self.order.remove(&serial);
                self.stats.failed += 1;
                self.failed.push((key, entry.payload));
                self.events.push_back(SenderEvent::Failed {
                    key,
                    transmissions: entry.transmissions,
                    elapsed: now - entry.first_sent,
                });
                continue;
            }
            let wait =
                self.config.retransmit && (self.queued(&entry, now) || self.copy_tokens == 0);
            if wait {
                // Not lost: waiting at the peer behind the messages it is answering
                // now. Or the peer has answered nothing for a while and this round's
                // copies are spent. Look again in one RTO; a copy would only lengthen
                // a queue the peer may be working through.
                self.stats.waited += 1;
                let deadline = (now + self.rto()).min(entry.first_sent + a.give_up);
                entry.deadline = Some(deadline);
                self.timers.insert((deadline, serial));
                self.entries.insert(key, entry);
                continue;
            }
            self.copy_tokens = self.copy_tokens.saturating_sub(1);
            entry.transmissions += 1;
            entry.last_sent = now;
            entry.tx = self.next_tx();
            if entry.slow_interval.is_none() {
                entry.phase_retransmissions += 1;
            }
            self.arm(&mut entry, now);
            if let Some(interval) = entry.slow_interval {
                self.recovery_hint = Some(interval);
            }
            self.entries.insert(key, entry);
            self.stats.retransmissions += 1;
            self.events.push_back(SenderEvent::Retransmit(key));
        }
    }

    fn fixed_scan(&mut self, f: &FixedConfig, now: Instant) {
        if now < self.next_scan {
            return;
        }
        // Next tick strictly after `now`, on the grid anchored at the epoch.
        let period = f.scan_interval.as_nanos().max(1);
        let ticks = now.saturating_duration_since(self.epoch).as_nanos() / period + 1;
        self.next_scan = self.epoch + Duration::from_nanos((ticks * period) as u64);

        let keys: Vec<(u64, K)> = self.order.iter().map(|(s, k)| (*s, *k)).collect();
        for (serial, key) in keys {
            let entry = self.entries.get_mut(&key).expect("order and entries agree");
            if entry.transmissions > f.max_retries {
                let (transmissions, elapsed) = (entry.transmissions, now - entry.first_sent);
                let entry = self.entries.remove(&key).expect("just found");
                self.failed.push((key, entry.payload));
                self.order.remove(&serial);
                self.stats.failed += 1;
                self.events.push_back(SenderEvent::Failed {
                    key,
                    transmissions,
                    elapsed,
                });
            } else if now.saturating_duration_since(entry.first_sent) > f.min_age {
                entry.transmissions += 1;
                self.stats.retransmissions += 1;
                self.events.push_back(SenderEvent::Retransmit(key));
            }
        }
    }
}

#[cfg(test)]
mod tests;
