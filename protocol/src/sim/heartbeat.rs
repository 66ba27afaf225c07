//! Scenario: an idle client behind a NAT, kept reachable by its heartbeat policy.
//!
//! The NAT forgets the client's mapping after `nat_timeout` without an outbound packet;
//! the next outbound packet gets a new public port, so the server's
//! [`HeartbeatReply::observed_addr`](crate::pb::HeartbeatReply) changes. While the
//! mapping is expired the server cannot push to the client: the scenario adds that
//! up as *unreachable time*, the cost of probing too long an interval.
//!
//! Packets counted, as on QUIC: an answered heartbeat is three (the heartbeat, the
//! reply, the client's ACK of the reply; the NAT's idle time is measured from the
//! heartbeat, so the model is slightly pessimistic about the mapping); a quiet keepalive
//! is two (the keepalive, the server's ACK), plus a `PATH_CHALLENGE` and its response when
//! it went out on an expired mapping.

use std::time::{Duration, Instant};

use super::{EventQueue, Link, LinkConfig};
use crate::heartbeat::{HeartbeatAction, HeartbeatConfig, SmartHeartbeat};

/// Parameters of a run.
#[derive(Debug, Clone)]
pub struct HeartbeatScenario {
    /// The NAT's mapping timeout.
    pub nat_timeout: Duration,
    /// From this time into the run, the NAT's timeout becomes this (a NAT that changed
    /// its policy, or a different NAT behind the same network label).
    pub nat_timeout_later: Option<(Duration, Duration)>,
    /// Virtual time to simulate.
    pub duration: Duration,
    /// The policy. For a fixed-interval baseline, set min = max in both profiles.
    pub config: HeartbeatConfig,
    /// App state for the whole run.
    pub foreground: bool,
    /// Loss each way.
    pub loss: f64,
    /// Round-trip time.
    pub rtt: Duration,
    /// RNG seed.
    pub seed: u64,
    /// The client sees its packets acknowledged (QUIC): quiet keepalives once locked.
    pub acks_observable: bool,
}

impl HeartbeatScenario {
    /// A lossless, backgrounded client for `duration` behind a NAT of `nat_timeout`.
    pub fn background(nat_timeout: Duration, duration: Duration, seed: u64) -> Self {
        HeartbeatScenario {
            nat_timeout,
            nat_timeout_later: None,
            duration,
            config: HeartbeatConfig::default(),
            foreground: false,
            loss: 0.0,
            rtt: Duration::from_millis(100),
            seed,
            acks_observable: true,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatReport {
    /// Heartbeats sent (including retries).
    pub heartbeats: u64,
    /// Replies received.
    pub replies: u64,
    /// Quiet keepalives sent (a subset of `heartbeats`).
    pub keepalives: u64,
    /// Packets sent by the client (heartbeats).
    pub packets_up: u64,
    /// Packets received by the client (replies).
    pub packets_down: u64,
    /// Times the NAT mapping expired.
    pub nat_expiries: u64,
    /// Expiries after the interval locked (must stay 0 on a steady NAT).
    pub nat_expiries_after_lock: u64,
    /// Total time the client was unreachable for pushes.
    pub unreachable: Duration,
    /// `ConnectionLost` reports.
    pub connection_lost: u64,
    /// Idle probes evaluated until the interval locked, if it did.
    pub probes_to_lock: Option<u32>,
    /// Virtual time until it locked.
    pub time_to_lock: Option<Duration>,
    /// Interval in use at the end.
    pub final_interval: Duration,
    /// Re-probes of a lock that had stood for `reprobe_after`.
    pub reprobes: u32,
    /// Interval after each change: (time since start, interval).
    pub trace: Vec<(Duration, Duration)>,
}

impl HeartbeatReport {
    /// Client packets (both directions) per hour of the run.
    pub fn packets_per_hour(&self, duration: Duration) -> f64 {
        (self.packets_up + self.packets_down) as f64 * 3600.0 / duration.as_secs_f64()
    }
}

/// What comes back to the client.
enum Back {
    /// A heartbeat reply, with the address the server saw.
    Reply(String),
    /// QUIC's ACK of a quiet keepalive; `rebound`: after a path validation.
    Ack { rebound: bool },
}

/// Runs the scenario.
pub fn run(s: &HeartbeatScenario) -> HeartbeatReport {
    const LABEL: &str = "sim-net";
    let t0 = Instant::now();
    let end = t0 + s.duration;
    let link = LinkConfig::lossy(s.loss, s.rtt / 2);
    let mut up = Link::new(link.clone(), t0, s.seed.wrapping_add(11));
    let mut down = Link::new(link, t0, s.seed.wrapping_add(12));
    let mut hb = SmartHeartbeat::new(s.config.clone(), LABEL, t0);
    hb.set_foreground(s.foreground);
    hb.set_acks_observable(s.acks_observable);
    let mut replies: EventQueue<Back> = EventQueue::default();
    let mut r = HeartbeatReport::default();
    let mut nat_last_out = t0;
    let mut nat_port: u32 = 40_000;
    let mut last_interval = hb.interval();
    r.trace.push((Duration::ZERO, last_interval));

    loop {
        let timer = hb.poll_timeout();
        let at = replies.peek_time().map_or(timer, |t| t.min(timer));
        if at > end {
            break;
        }
        if replies.peek_time().is_some_and(|t| t <= timer) {
            let (now, back) = replies.pop().expect("peeked");
            r.packets_down += 1;
            match back {
                Back::Reply(addr) => {
                    r.replies += 1;
                    r.packets_up += 1; // QUIC's ACK of the reply
                    hb.on_reply(now, &addr);
                }
                Back::Ack { rebound } => hb.on_acked(now, rebound),
            }
        } else {
            let now = timer;
            match hb.handle_timeout(now) {
                Some(action @ (HeartbeatAction::Send | HeartbeatAction::Keepalive)) => {
                    let quiet = action == HeartbeatAction::Keepalive;
                    r.heartbeats += 1;
                    r.keepalives += u64::from(quiet);
                    r.packets_up += 1;
                    let gap = now.saturating_duration_since(nat_last_out);
                    let nat_timeout = match s.nat_timeout_later {
                        Some((from, later)) if now >= t0 + from => later,
                        _ => s.nat_timeout,
                    };
                    let rebound = gap >= nat_timeout;
                    if rebound {
                        nat_port += 1;
                        r.nat_expiries += 1;
                        r.unreachable += gap - nat_timeout;
                        if r.probes_to_lock.is_some() {
                            r.nat_expiries_after_lock += 1;
                        }
                    }
                    nat_last_out = now;
                    for arrive in up.transmit(now, 4) {
                        // The server answers every heartbeat that reaches it; its QUIC
                        // acknowledges a keepalive (after validating a new address).
                        if quiet && rebound {
                            r.packets_down += 1;
                            r.packets_up += 1;
                        }
                        for back in down.transmit(arrive, 20) {
                            let b = if quiet {
                                Back::Ack { rebound }
                            } else {
                                Back::Reply(format!("203.0.113.9:{nat_port}"))
                            };
                            replies.push(back, b);
                        }
                    }
                }
                Some(HeartbeatAction::ConnectionLost) => {
                    r.connection_lost += 1;
                    // Reconnect at once (the handshake is outbound traffic too).
                    nat_last_out = now;
                    hb.on_connected(now);
                }
                None => {}
            }
        }
        let st = hb.network_state(LABEL).expect("label known");
        if st.locked() && r.probes_to_lock.is_none() {
            r.probes_to_lock = Some(st.probes);
            r.time_to_lock = Some(at - t0);
        }
        if hb.interval() != last_interval {
            last_interval = hb.interval();
            r.trace.push((at - t0, last_interval));
        }
    }
    r.final_interval = hb.interval();
    r.reprobes = hb.network_state(LABEL).map_or(0, |st| st.reprobes);
    r
}
