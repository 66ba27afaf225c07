//! Scenario: one sender, one receiver, a lossy path, N messages.
//!
//! The sender offers messages at Poisson-distributed times, registers each with a
//! [`Sender`] (queueing it while the window is full), and transmits real encoded
//! [`Frame::Chat`] frames; the receiver decodes them, drops duplicates with a
//! [`DuplicateFilter`], hands new ones to the "app" and answers every copy with a
//! [`Frame::SendResult`] ACK, as the server does. Delivery time is measured from the
//! moment the app offered the message to its first arrival at the receiving app.
//!
//! Exactly-once is checked by an oracle outside the mechanism: the scenario counts
//! how many times each message reached the receiving app.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::{EventQueue, Link, LinkConfig, LinkStats, percentile};
use crate::dedup::{DedupConfig, DuplicateFilter};
use crate::frame::{self, DEFAULT_MAX_FRAME_BODY, FLAG_RETRANSMIT, Frame};
use crate::pb;
use crate::qos::{QosConfig, Sender, SenderEvent};

/// Parameters of a run.
#[derive(Debug, Clone)]
pub struct QosScenario {
    /// Messages to send.
    pub messages: u64,
    /// Mean time between two offered messages (exponential inter-arrival).
    pub mean_interval: Duration,
    /// Sender -> receiver direction.
    pub up: LinkConfig,
    /// Receiver -> sender direction (ACKs).
    pub down: LinkConfig,
    /// The sender's schedule.
    pub qos: QosConfig,
    /// The receiver's duplicate filter.
    pub dedup: DedupConfig,
    /// Message body size in bytes.
    pub body_len: usize,
    /// RNG seed (offers and both links derive from it).
    pub seed: u64,
}

impl QosScenario {
    /// `messages` messages over a symmetric path with `loss` each way and `rtt`.
    pub fn symmetric(messages: u64, loss: f64, rtt: Duration, qos: QosConfig, seed: u64) -> Self {
        let link = LinkConfig::lossy(loss, rtt / 2);
        QosScenario {
            messages,
            mean_interval: Duration::from_millis(50),
            up: link.clone(),
            down: link,
            qos,
            dedup: DedupConfig::default(),
            body_len: 20,
            seed,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct QosReport {
    /// Messages offered by the sending app.
    pub offered: u64,
    /// Distinct messages that reached the receiving app.
    pub delivered: u64,
    /// Messages that reached the receiving app more than once (must be 0).
    pub delivered_twice: u64,
    /// Messages the sender reported failed.
    pub failed: u64,
    /// Failed messages that the receiver never got either.
    pub failed_and_lost: u64,
    /// Copies the duplicate filter dropped.
    pub duplicates_dropped: u64,
    /// Transmissions of data frames (first sends + retransmissions).
    pub data_transmissions: u64,
    /// Sorted offer-to-receive times of delivered messages.
    pub delivery_times: Vec<Duration>,
    /// Virtual time the run took.
    pub duration: Duration,
    /// Sender -> receiver link counters.
    pub up: LinkStats,
    /// Receiver -> sender link counters.
    pub down: LinkStats,
}

impl QosReport {
    /// Delivery-time percentile.
    pub fn p(&self, pct: f64) -> Duration {
        percentile(&self.delivery_times, pct).unwrap_or_default()
    }

    /// Longest delivery time.
    pub fn max(&self) -> Duration {
        self.delivery_times.last().copied().unwrap_or_default()
    }
}

enum Ev {
    Offer(u64),
    ToReceiver(bytes::Bytes),
    ToSender(bytes::Bytes),
}

fn msg_id(i: u64) -> bytes::Bytes {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    bytes::Bytes::copy_from_slice(&id)
}

fn id_of(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes[..8].try_into().expect("16-byte id"))
}

/// Runs the scenario to completion (every message acknowledged or failed).
pub fn run(s: &QosScenario) -> QosReport {
    let t0 = Instant::now();
    let mut rng = SmallRng::seed_from_u64(s.seed);
    let mut up = Link::new(s.up.clone(), t0, s.seed.wrapping_add(1));
    let mut down = Link::new(s.down.clone(), t0, s.seed.wrapping_add(2));
    let mut sender: Sender<u64> = Sender::new(s.qos.clone(), t0);
    let mut filter = DuplicateFilter::new(s.dedup.clone());
    let mut queue: EventQueue<Ev> = EventQueue::default();
    let mut backlog: VecDeque<u64> = VecDeque::new();
    let n = s.messages as usize;
    let mut offered_at = vec![t0; n];
    let mut received = vec![0u32; n];
    let mut failed = vec![false; n];
    let mut times = Vec::with_capacity(n);
    let mut report = QosReport {
        offered: s.messages,
        delivered: 0,
        delivered_twice: 0,
        failed: 0,
        failed_and_lost: 0,
        duplicates_dropped: 0,
        data_transmissions: 0,
        delivery_times: vec![],
        duration: Duration::ZERO,
        up: LinkStats::default(),
        down: LinkStats::default(),
    };
    let body = bytes::Bytes::from(vec![b'x'; s.body_len]);
    let data_frame = |i: u64| {
        Frame::Chat(pb::ChatMessage {
            client_msg_id: msg_id(i),
            sender: "alice".into(),
            recipient: "bob".into(),
            kind: pb::ConversationKind::Direct as i32,
            content_type: 0,
            body: body.clone(),
            client_ts_ms: 0,
            send_seq: 0,
        })
    };

    let mut t = t0;
    for i in 0..s.messages {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        t += s.mean_interval.mul_f64(-u.ln());
        queue.push(t, Ev::Offer(i));
    }

    let mut now = t0;
    loop {
        let next_event = queue.peek_time();
        let next_timer = sender.poll_timeout();
        let at = match (next_event, next_timer) {
            (None, None) => break,
            (Some(e), Some(tm)) => e.min(tm),
            (Some(e), None) => e,
            (None, Some(tm)) => tm,
        };
        now = at;
        if next_timer.is_some_and(|tm| tm <= at) {
            sender.handle_timeout(now);
        } else {
            let (_, ev) = queue.pop().expect("peeked");
            match ev {
                Ev::Offer(i) => {
                    offered_at[i as usize] = now;
                    backlog.push_back(i);
                }
                Ev::ToReceiver(bytes) => {
                    let Ok(frame::Decoded::Frame {
                        frame: Frame::Chat(m),
                        ..
                    }) = frame::decode(&bytes, DEFAULT_MAX_FRAME_BODY)
                    else {
                        panic!("receiver got an undecodable frame");
                    };
                    let i = id_of(&m.client_msg_id);
                    if filter.insert(i, now) {
                        received[i as usize] += 1;
                        if received[i as usize] == 1 {
                            times.push(now - offered_at[i as usize]);
                        }
                    } else {
                        report.duplicates_dropped += 1;
                    }
                    let ack = Frame::SendResult(pb::SendResult {
                        client_msg_id: m.client_msg_id,
                        code: pb::ErrorCode::Ok as i32,
                        server_msg_id: i + 1,
                        seq: i + 1,
                        ..Default::default()
                    })
                    .to_bytes(0);
                    for arrive in down.transmit(now, ack.len()) {
                        queue.push(arrive, Ev::ToSender(ack.clone()));
                    }
                }
                Ev::ToSender(bytes) => {
                    let Ok(frame::Decoded::Frame {
                        frame: Frame::SendResult(r),
                        ..
                    }) = frame::decode(&bytes, DEFAULT_MAX_FRAME_BODY)
                    else {
                        panic!("sender got an undecodable frame");
                    };
                    sender.on_ack(id_of(&r.client_msg_id), now);
                }
            }
        }
        while let Some(ev) = sender.poll_event() {
            match ev {
                SenderEvent::Retransmit(i) => {
                    let bytes = data_frame(i).to_bytes(FLAG_RETRANSMIT);
                    report.data_transmissions += 1;
                    for arrive in up.transmit(now, bytes.len()) {
                        queue.push(arrive, Ev::ToReceiver(bytes.clone()));
                    }
                }
                SenderEvent::Failed { key, .. } => {
                    failed[key as usize] = true;
                }
            }
        }
        while sender.has_room() {
            let Some(i) = backlog.pop_front() else { break };
            sender.try_send(i, now).expect("room was checked");
            let bytes = data_frame(i).to_bytes(0);
            report.data_transmissions += 1;
            for arrive in up.transmit(now, bytes.len()) {
                queue.push(arrive, Ev::ToReceiver(bytes.clone()));
            }
        }
    }
    assert!(backlog.is_empty(), "every offered message was sent");

    report.duration = now - t0;
    report.delivered = received.iter().filter(|c| **c >= 1).count() as u64;
    report.delivered_twice = received.iter().filter(|c| **c >= 2).count() as u64;
    report.failed = failed.iter().filter(|f| **f).count() as u64;
    report.failed_and_lost = failed
        .iter()
        .zip(&received)
        .filter(|(f, r)| **f && **r == 0)
        .count() as u64;
    times.sort_unstable();
    report.delivery_times = times;
    report.up = up.stats();
    report.down = down.stats();
    report
}
