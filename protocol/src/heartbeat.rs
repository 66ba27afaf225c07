//! The smart heartbeat policy.
//!
//! An idle phone must send *something* before the carrier's NAT forgets its UDP
//! mapping, or the server can no longer push to it. Send too often and the radio never
//! sleeps (battery, data); too rarely and pushes are lost until the next packet. The
//! NAT timeout is unknown and differs per network, so the interval is *learned*, as in
//! WeChat/Mars' smart heartbeat:
//!
//! * **Grow.** Start at `initial`; after `successes_to_grow` consecutive successful idle
//!   probes at the learned interval, grow it by `step` (up to the profile's `max`).
//! * **Step back.** A probe fails when the heartbeat reply shows a *different observed
//!   address* than the previous reply (the NAT binding expired during the idle gap and
//!   the next packet got a new mapping: QUIC migrated transparently, but pushes sent in
//!   the gap were lost), or when replies stop altogether after a probe longer than any
//!   known-good interval. The interval falls back to the last known-good value.
//! * **Refine, then lock.** The failed interval becomes a ceiling. Growth continues by
//!   halving the distance to the ceiling until it is within `resolution`, then the
//!   interval locks at the last known-good value less a `safety_margin` (10 %): a
//!   success right at the edge proves little, because what the NAT measures is the
//!   silence after the client's *last* packet (QUIC acknowledges the heartbeat reply a
//!   few milliseconds later) and phones fire timers late. With the defaults a 45 s NAT locks at
//!   33.75 s after 10 probes and a 120 s NAT at 101.25 s after 13 probes (see
//!   `tests/sim_heartbeat.rs` and docs/bench/qos-sim.md).
//! * **Re-probe.** A lock is not forever: after it stood `reprobe_after` (12 h), one idle
//!   probe tests the old ceiling. A NAT that became more lenient passes it and learning
//!   resumes above; an unchanged NAT expires that one mapping and the lock is back at once.
//! * **Quiet once locked.** An answered heartbeat costs three packets: the heartbeat, the
//!   reply, and QUIC's ACK of the reply. Once the interval is locked (and the transport
//!   lets the client see its own packets acknowledged: QUIC, [`SmartHeartbeat::set_acks_observable`]),
//!   heartbeats are *quiet keepalives* the server does not answer: the keepalive and the
//!   server's QUIC ACK, two packets. The ACK proves the path; a NAT binding that expired
//!   anyway shows as the server validating the client's new address (a QUIC
//!   `PATH_CHALLENGE`), reported to [`SmartHeartbeat::on_acked`] as a failure. Every
//!   `answer_every`-th heartbeat is still answered (RTT, the server's head, and the
//!   session itself alive, not just its QUIC connection). A keepalive not acknowledged
//!   within `reply_timeout` is retried as an answered heartbeat, like a missed reply.
//! * **Per network.** Learned state is kept per network label (e.g. the Wi-Fi SSID hash
//!   or "cellular"), so returning to a known network starts from its learned value.
//! * **Foreground/background.** The learned value is a property of the network; each
//!   profile clamps it to its own `[min, max]`. Foreground uses a short max (fast
//!   death detection while the user looks at the app); background lets it grow to
//!   minutes. Coming to the foreground sends one heartbeat at once (a cheap check that
//!   the connection survived the background).
//!
//! Death detection: a reply is expected within `reply_timeout`; a missing reply is
//! retried at once; `max_missed` consecutive misses report [`HeartbeatAction::ConnectionLost`].
//! Any frame the client sends resets the idle timer ([`SmartHeartbeat::on_sent`]): real
//! traffic keeps the NAT binding alive just as well as a heartbeat.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Bounds of one app state's heartbeat interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatProfile {
    /// Shortest interval used.
    pub min: Duration,
    /// Longest interval used.
    pub max: Duration,
}

/// Configuration of a [`SmartHeartbeat`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// While the app is visible: fast death detection (default 15-60 s).
    pub foreground: HeartbeatProfile,
    /// While the app is in the background: as few packets as the NAT allows (20 s - 10 min).
    pub background: HeartbeatProfile,
    /// Starting interval on an unknown network. 30 s is below the UDP NAT timeouts
    /// measured on most carriers and Wi-Fi routers, so the first probes succeed.
    pub initial: Duration,
    /// Growth per step while no ceiling is known.
    pub step: Duration,
    /// Consecutive successful idle probes before growing (guards against a lucky probe).
    pub successes_to_grow: u32,
    /// Once the gap between known-good and failed is at most this, lock.
    pub resolution: Duration,
    /// Percentage taken off the last known-good interval when it locks.
    pub safety_margin_pct: u32,
    /// How long to wait for a heartbeat reply.
    pub reply_timeout: Duration,
    /// Consecutive unanswered heartbeats that mean the connection is dead.
    pub max_missed: u32,
    /// Networks remembered (least recently used forgotten first).
    pub max_networks: usize,
    /// Once locked, one heartbeat in this many is answered; the others are quiet
    /// keepalives (see the module docs). 0 or 1: every heartbeat is answered.
    pub answer_every: u32,
    /// How long a lock stands before the interval is re-probed: one probe at the old
    /// ceiling finds a NAT that became more lenient (learning resumes from there); if the
    /// NAT is as before it costs one expired binding, and the lock is taken again at
    /// once. `None`: a lock is forever.
    pub reprobe_after: Option<Duration>,
}

impl HeartbeatConfig {
    /// A fixed interval in both app states, never learning (the MobileIMSDK-style
    /// baseline the benchmarks compare the smart heartbeat with).
    pub fn fixed(interval: Duration) -> Self {
        let p = HeartbeatProfile {
            min: interval,
            max: interval,
        };
        HeartbeatConfig {
            foreground: p.clone(),
            background: p,
            initial: interval,
            ..HeartbeatConfig::default()
        }
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            foreground: HeartbeatProfile {
                min: Duration::from_secs(15),
                max: Duration::from_secs(60),
            },
            background: HeartbeatProfile {
                min: Duration::from_secs(20),
                max: Duration::from_secs(600),
            },
            initial: Duration::from_secs(30),
            step: Duration::from_secs(30),
            successes_to_grow: 2,
            resolution: Duration::from_secs(10),
            safety_margin_pct: 10,
            reply_timeout: Duration::from_secs(8),
            max_missed: 3,
            max_networks: 16,
            reprobe_after: Some(Duration::from_secs(12 * 3600)),
            answer_every: 20,
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatAction {
    /// Send a heartbeat frame now.
    Send,
    /// Send a quiet keepalive now (a heartbeat the server does not answer); then report
    /// the transport's acknowledgement of it with [`SmartHeartbeat::on_acked`].
    Keepalive,
    /// No reply to `max_missed` heartbeats: treat the connection as dead and reconnect.
    ConnectionLost,
}

/// What was learned about one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkState {
    /// The learned NAT-safe interval.
    pub learned: Duration,
    /// Longest interval that succeeded.
    pub last_ok: Option<Duration>,
    /// Shortest interval that failed.
    pub ceiling: Option<Duration>,
    /// Consecutive successes at `learned`.
    pub successes: u32,
    /// When learning finished and the interval locked (`None` while learning); the
    /// re-probe is timed from here.
    pub locked_at: Option<Instant>,
    /// Re-probes started after a lock stood for [`HeartbeatConfig::reprobe_after`].
    pub reprobes: u32,
    /// Idle probes evaluated (successes and failures).
    pub probes: u32,
    /// Probes that failed.
    pub failures: u32,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    sent_at: Instant,
    /// The idle gap the first heartbeat of this probe tested.
    tested: Duration,
    retries: u32,
    /// A quiet keepalive: settled by [`SmartHeartbeat::on_acked`], not by a reply.
    quiet: bool,
}

/// The heartbeat state machine of one client connection.
#[derive(Debug, Clone)]
pub struct SmartHeartbeat {
    config: HeartbeatConfig,
    networks: HashMap<String, NetworkState>,
    lru: VecDeque<String>,
    current: String,
    foreground: bool,
    last_sent: Instant,
    probe: Option<Probe>,
    last_addr: Option<String>,
    send_now: bool,
    /// The transport shows the client its packets acknowledged (QUIC).
    acks_observable: bool,
    /// Quiet keepalives since the last answered heartbeat.
    quiet_run: u32,
}

impl NetworkState {
    /// Learning finished: the interval is locked.
    pub fn locked(&self) -> bool {
        self.locked_at.is_some()
    }
}

impl SmartHeartbeat {
    /// Starts on network `label`, in the foreground, with a connection that just opened.
    pub fn new(config: HeartbeatConfig, label: &str, now: Instant) -> Self {
        let mut hb = SmartHeartbeat {
            config,
            networks: HashMap::new(),
            lru: VecDeque::new(),
            current: String::new(),
            foreground: true,
            last_sent: now,
            probe: None,
            last_addr: None,
            send_now: false,
            acks_observable: false,
            quiet_run: 0,
        };
        hb.select(label);
        hb
    }

    /// The network label in use.
    pub fn network(&self) -> &str {
        &self.current
    }

    /// What was learned about `label`.
    pub fn network_state(&self, label: &str) -> Option<&NetworkState> {
        self.networks.get(label)
    }

    /// Whether the app is in the foreground.
    pub fn is_foreground(&self) -> bool {
        self.foreground
    }

    /// The interval in use now (learned value clamped by the app-state profile).
    pub fn interval(&self) -> Duration {
        let p = if self.foreground {
            &self.config.foreground
        } else {
            &self.config.background
        };
        self.state().learned.clamp(p.min, p.max)
    }

    /// When [`handle_timeout`](Self::handle_timeout) should run next.
    pub fn poll_timeout(&self) -> Instant {
        if self.send_now {
            return self.last_sent;
        }
        match self.probe {
            Some(p) => p.sent_at + self.config.reply_timeout,
            None => self.last_sent + self.interval(),
        }
    }

    /// Runs the timer. Returns what to do, if anything. After `Send`, the caller sends
    /// the heartbeat; it must not call [`on_sent`](Self::on_sent) for it.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<HeartbeatAction> {
        if let Some(p) = self.probe {
            if now < p.sent_at + self.config.reply_timeout {
                return None;
            }
            if p.retries + 1 >= self.config.max_missed {
                self.probe = None;
                let st = self.state();
                if st.last_ok.is_none_or(|ok| p.tested > ok) {
                    // Replies stopped after an idle gap longer than anything known to
                    // work: the NAT (or a middlebox) likely dropped the binding.
                    self.record_failure(p.tested, now);
                }
                return Some(HeartbeatAction::ConnectionLost);
            }
            // A retry is always answered: it must prove the session, not just the path.
            self.probe = Some(Probe {
                sent_at: now,
                tested: p.tested,
                retries: p.retries + 1,
                quiet: false,
            });
            self.last_sent = now;
            return Some(HeartbeatAction::Send);
        }
        if self.send_now || now >= self.last_sent + self.interval() {
            let tested = now.saturating_duration_since(self.last_sent);
            // A forced heartbeat (foreground, network change) tests nothing.
            let tested = if self.send_now {
                Duration::ZERO
            } else {
                tested
            };
            let quiet = !self.send_now
                && self.acks_observable
                && self.state().locked()
                && self.quiet_run + 1 < self.config.answer_every;
            self.quiet_run = if quiet { self.quiet_run + 1 } else { 0 };
            self.send_now = false;
            self.probe = Some(Probe {
                sent_at: now,
                tested,
                retries: 0,
                quiet,
            });
            self.last_sent = now;
            return Some(if quiet {
                HeartbeatAction::Keepalive
            } else {
                HeartbeatAction::Send
            });
        }
        None
    }

    /// The client sent some other frame at `now`: the NAT binding is fresh.
    pub fn on_sent(&mut self, now: Instant) {
        if now > self.last_sent {
            self.last_sent = now;
        }
    }

    /// A heartbeat reply arrived. Returns the round-trip time it measured.
    pub fn on_reply(&mut self, now: Instant, observed_addr: &str) -> Option<Duration> {
        let probe = self.probe.take()?;
        let changed = self
            .last_addr
            .as_deref()
            .is_some_and(|a| a != observed_addr);
        self.last_addr = Some(observed_addr.to_owned());
        if changed {
            if probe.tested > Duration::ZERO {
                self.record_failure(probe.tested, now);
            }
        } else if probe.retries == 0 && probe.tested > Duration::ZERO {
            self.record_success(probe.tested, now);
        }
        Some(now.saturating_duration_since(probe.sent_at))
    }

    /// The transport acknowledged a quiet keepalive (QUIC: an ACK frame arrived after it
    /// went). `rebound`: the server validated a new client address meanwhile (a QUIC
    /// `PATH_CHALLENGE` arrived): the NAT binding had expired, and this keepalive's gap
    /// was too long. Ignored unless a quiet keepalive is waiting.
    pub fn on_acked(&mut self, now: Instant, rebound: bool) {
        let Some(probe) = self.probe.filter(|p| p.quiet) else {
            return;
        };
        self.probe = None;
        if rebound {
            // The observed address changed: the next reply is a new baseline, not a
            // second failure for the same expiry.
            self.last_addr = None;
            if probe.tested > Duration::ZERO {
                self.record_failure(probe.tested, now);
            }
        } else if probe.tested > Duration::ZERO {
            self.record_success(probe.tested, now);
        }
    }

    /// Whether the transport shows the client its packets acknowledged (QUIC: yes; TLS
    /// over TCP: no, so every heartbeat is answered there).
    pub fn set_acks_observable(&mut self, observable: bool) {
        self.acks_observable = observable;
    }

    /// Whether a quiet keepalive waits for its acknowledgement.
    pub fn awaiting_ack(&self) -> bool {
        self.probe.is_some_and(|p| p.quiet)
    }

    /// A new connection is up (after login): timers restart, the address is unknown.
    pub fn on_connected(&mut self, now: Instant) {
        self.last_sent = now;
        self.probe = None;
        self.last_addr = None;
        self.send_now = false;
        self.quiet_run = 0;
    }

    /// The app moved between foreground and background. Entering the foreground sends
    /// one heartbeat at once.
    pub fn set_foreground(&mut self, foreground: bool) {
        if foreground && !self.foreground && self.probe.is_none() {
            self.send_now = true;
        }
        self.foreground = foreground;
    }

    /// The app reported a different network. Switches to its learned state and probes
    /// the new path at once; the next observed address is a new baseline, not a failure.
    pub fn network_changed(&mut self, label: &str) {
        self.select(label);
        self.probe = None;
        self.last_addr = None;
        self.send_now = true;
    }

    fn state(&self) -> &NetworkState {
        &self.networks[&self.current]
    }

    fn state_mut(&mut self) -> &mut NetworkState {
        self.networks
            .get_mut(&self.current)
            .expect("current network has state")
    }

    fn select(&mut self, label: &str) {
        self.current = label.to_owned();
        self.lru.retain(|l| l != label);
        self.lru.push_back(label.to_owned());
        if !self.networks.contains_key(label) {
            let initial = self.config.initial;
            self.networks.insert(
                label.to_owned(),
                NetworkState {
                    learned: initial,
                    last_ok: None,
                    ceiling: None,
                    successes: 0,
                    locked_at: None,
                    reprobes: 0,
                    probes: 0,
                    failures: 0,
                },
            );
        }
        while self.lru.len() > self.config.max_networks.max(1) {
            if let Some(old) = self.lru.pop_front() {
                self.networks.remove(&old);
            }
        }
    }

    /// Locks the current network at its learned value less the safety margin.
    fn lock(&mut self, now: Instant) {
        let (pct, min) = (self.config.safety_margin_pct.min(90), self.min_interval());
        let st = self.state_mut();
        st.locked_at = Some(now);
        st.learned = st.learned.mul_f64(1.0 - f64::from(pct) / 100.0).max(min);
    }

    /// The lock has stood for `reprobe_after`: the next idle probe tests the old ceiling
    /// (the shortest gap that ever failed). Success there means the NAT became more
    /// lenient: the ceiling is forgotten and growth goes on. Failure there relocks at
    /// once (the ceiling is within `resolution` of what is known to work).
    fn reprobe(&mut self) {
        let st = self.state_mut();
        let Some(ceiling) = st.ceiling.take() else {
            return;
        };
        st.locked_at = None;
        st.reprobes += 1;
        st.successes = 0;
        st.learned = ceiling;
    }

    fn min_interval(&self) -> Duration {
        self.config.foreground.min.min(self.config.background.min)
    }

    fn record_success(&mut self, tested: Duration, now: Instant) {
        let cap = if self.foreground {
            self.config.foreground.max
        } else {
            self.config.background.max
        };
        let (n, step, resolution) = (
            self.config.successes_to_grow,
            self.config.step,
            self.config.resolution,
        );
        let st = self.state_mut();
        st.probes += 1;
        st.last_ok = Some(st.last_ok.map_or(tested, |ok| ok.max(tested)));
        // Only a probe of the learned value itself teaches anything new.
        if tested + Duration::from_millis(1) < st.learned {
            return;
        }
        if let Some(at) = st.locked_at {
            let stood = now.saturating_duration_since(at);
            if self
                .config
                .reprobe_after
                .is_some_and(|after| stood >= after)
            {
                self.reprobe();
            }
            return;
        }
        st.successes += 1;
        if st.successes < n || st.learned >= cap {
            return;
        }
        st.successes = 0;
        match st.ceiling {
            None => st.learned = (st.learned + step).min(cap),
            Some(ceiling) => {
                let gap = ceiling.saturating_sub(st.learned);
                if gap <= resolution {
                    self.lock(now);
                } else {
                    st.learned += gap / 2;
                }
            }
        }
    }

    fn record_failure(&mut self, tested: Duration, now: Instant) {
        let (min, step, resolution) = (
            self.min_interval(),
            self.config.step,
            self.config.resolution,
        );
        let st = self.state_mut();
        st.probes += 1;
        st.failures += 1;
        st.successes = 0;
        st.ceiling = Some(st.ceiling.map_or(tested, |c| c.min(tested)));
        if st.last_ok.is_some_and(|ok| ok >= tested) {
            // The NAT got stricter than what worked before: forget that.
            st.last_ok = None;
        }
        st.learned = st
            .last_ok
            .unwrap_or_else(|| tested.saturating_sub(step))
            .max(min);
        let ceiling = st.ceiling.expect("just set");
        st.locked_at = None;
        if ceiling.saturating_sub(st.learned) <= resolution || st.learned <= min {
            self.lock(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_after_successes_and_clamps_per_profile() {
        let t0 = Instant::now();
        let mut hb = SmartHeartbeat::new(HeartbeatConfig::default(), "wifi", t0);
        hb.set_foreground(false);
        let mut now = t0;
        for _ in 0..2 {
            now = hb.poll_timeout();
            assert_eq!(hb.handle_timeout(now), Some(HeartbeatAction::Send));
            hb.on_reply(now + Duration::from_millis(50), "1.2.3.4:5");
        }
        assert_eq!(hb.interval(), Duration::from_secs(60));
        for _ in 0..2 {
            now = hb.poll_timeout();
            hb.handle_timeout(now);
            hb.on_reply(now, "1.2.3.4:5");
        }
        assert_eq!(hb.interval(), Duration::from_secs(90));
        hb.set_foreground(true);
        assert_eq!(
            hb.interval(),
            Duration::from_secs(60),
            "foreground caps at 60 s"
        );
        assert_eq!(
            hb.poll_timeout(),
            now,
            "coming to the foreground sends at once"
        );
        assert_eq!(hb.handle_timeout(now), Some(HeartbeatAction::Send));
    }

    #[test]
    fn missed_replies_are_retried_then_reported() {
        let t0 = Instant::now();
        let cfg = HeartbeatConfig::default();
        let mut hb = SmartHeartbeat::new(cfg.clone(), "cell", t0);
        let t = hb.poll_timeout();
        assert_eq!(hb.handle_timeout(t), Some(HeartbeatAction::Send));
        assert_eq!(
            hb.handle_timeout(t + cfg.reply_timeout),
            Some(HeartbeatAction::Send)
        );
        assert_eq!(
            hb.handle_timeout(t + cfg.reply_timeout * 2),
            Some(HeartbeatAction::Send)
        );
        assert_eq!(
            hb.handle_timeout(t + cfg.reply_timeout * 3),
            Some(HeartbeatAction::ConnectionLost)
        );
    }

    #[test]
    fn traffic_postpones_heartbeats() {
        let t0 = Instant::now();
        let mut hb = SmartHeartbeat::new(HeartbeatConfig::default(), "wifi", t0);
        hb.on_sent(t0 + Duration::from_secs(20));
        assert_eq!(hb.poll_timeout(), t0 + Duration::from_secs(50));
        assert_eq!(hb.handle_timeout(t0 + Duration::from_secs(40)), None);
    }

    #[test]
    fn networks_keep_their_own_learned_interval() {
        let t0 = Instant::now();
        let mut hb = SmartHeartbeat::new(HeartbeatConfig::default(), "wifi", t0);
        hb.set_foreground(false);
        for _ in 0..2 {
            let now = hb.poll_timeout();
            hb.handle_timeout(now);
            hb.on_reply(now, "a:1");
        }
        assert_eq!(hb.interval(), Duration::from_secs(60));
        hb.network_changed("cellular");
        assert_eq!(hb.interval(), Duration::from_secs(30));
        let now = hb.poll_timeout();
        assert_eq!(hb.handle_timeout(now), Some(HeartbeatAction::Send));
        hb.on_reply(now, "b:2");
        assert_eq!(
            hb.network_state("cellular").unwrap().failures,
            0,
            "new path is a baseline"
        );
        hb.network_changed("wifi");
        assert_eq!(hb.interval(), Duration::from_secs(60));
    }
}
