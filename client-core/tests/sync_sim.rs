//! The client's sync machine against the server's real store, in virtual time.
//!
//! Both ends' logic, no sockets and no clock (the quinn way, after `quinn-proto`'s
//! `Pair`): each device is a [`SyncMachine`] over its own SQLite store; the server is a
//! model session over the real [`SqliteStore`] (the same store, sync pages, summaries,
//! logs, receipts and read marks the server uses). Frames cross `protocol::sim` links:
//! datagram frames (`Push`, `DeliveryAck`) are lost, duplicated and reordered; stream
//! frames arrive in order, held back behind a lost packet (head-of-line blocking);
//! blackouts drop the connection and the device reconnects after them. The server
//! pushes each entry once and never retransmits, so every lost push must be recovered
//! by the client's gap logic. Each test compares the receiver's sequence with the
//! sender's, not counts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_client::store::Db;
use tern_client::sync::{LoginInfo, SyncConfig, SyncEvent, SyncMachine};
use tern_client::{ConversationKind, MessageStatus};
use tern_protocol::frame::FLAG_RETRANSMIT;
use tern_protocol::frame::Frame;
use tern_protocol::qos::{QosConfig, Sender, SenderEvent};
use tern_protocol::rate::TokenBucket;
use tern_protocol::redundancy::PathSample;
use tern_protocol::send_order::{Admit, SendOrder};
use tern_protocol::sim::{EventQueue, Link, LinkConfig};
use tern_protocol::{ClientMsgId, ErrorCode, pb};
use tern_server::store::sqlite::{Durability, SqliteStore};
use tern_server::store::{Fanout, GroupLimits, GroupOp, NewMessage, Store, StoreError, log_key};

enum Ev {
    /// The app is killed: the machine (everything in memory) is gone, the database stays.
    Restart {
        dev: usize,
    },
    ToServer {
        dev: usize,
        epoch: u64,
        frame: Frame,
    },
    ToClient {
        dev: usize,
        epoch: u64,
        frame: Frame,
    },
    Timer {
        dev: usize,
    },
    ServerTimer {
        dev: usize,
    },
    Drop {
        dev: usize,
    },
    Connect {
        dev: usize,
    },
}

struct Device {
    config: SyncConfig,
    user: String,
    device: String,
    db: Db,
    _dir: tempfile::TempDir,
    sync: SyncMachine,
    /// Connection generation: frames of an older connection are discarded.
    epoch: u64,
    online: bool,
    up: Link,
    down: Link,
    up_stream_free: Instant,
    /// The link's loss rate, reported to the machine as QUIC's packet counts would be
    /// (on a lossy link sends then go twice, `tern_protocol::redundancy`).
    path_loss: f64,
    down_stream_free: Instant,
    /// Message bodies announced to the app, in announcement order.
    announced: Vec<String>,
    /// The server session's push QoS for this device (the server's own engine and
    /// schedule), keyed by (log number, seq) and keeping the push it resends; new for
    /// every connection, like a server session.
    push_qos: Sender<(u32, u64), Frame>,
    /// Large groups' logs pushed on this connection; a log's number is its index + 1.
    logs: Vec<String>,
    /// The server session's rate limit for this device (with [`World::rate`]).
    bucket: Option<TokenBucket>,
    /// The newest push of each log skipped while the window was full (as the server).
    tail: Vec<((u32, u64), Frame)>,
    /// The server session's reassembly of this device's sends (the server's code).
    order: SendOrder,
}

impl Device {
    /// Keeps a push as its log's tail unless a newer one of that log is kept (as the
    /// server session does).
    fn keep_tail(&mut self, key: (u32, u64), push: Frame) {
        if self.tail.iter().any(|(k, _)| k.0 == key.0 && k.1 >= key.1) {
            return;
        }
        self.tail.retain(|(k, _)| k.0 != key.0);
        self.tail.push((key, push));
    }

    /// The kept tails that fit in the push window now, taken into flight.
    fn take_tails(&mut self, now: Instant) -> Vec<Frame> {
        let mut out = vec![];
        while self.push_qos.has_room() {
            let Some((key, frame)) = self.tail.pop() else {
                break;
            };
            if self.push_qos.try_send_with(key, frame.clone(), now).is_ok() {
                out.push(frame);
            }
        }
        out
    }
}

struct World {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn Store>,
    _server_dir: tempfile::TempDir,
    start: Instant,
    now: Instant,
    q: EventQueue<Ev>,
    devs: Vec<Device>,
    /// Downlink stream frames wait this much longer (a stream stalled behind a loss
    /// while datagrams pass): lets receipts overtake their `SendResult`.
    down_stream_extra: Duration,
    rng: rand::rngs::SmallRng,
    /// The server's send budget (frames per second, burst), enforced on every frame
    /// like the real session does and announced at login; `None`: unlimited.
    rate: Option<(u32, u32)>,
    /// Probability that the server answers a send SERVER_BUSY without storing it.
    busy: f64,
    /// RATE_LIMITED and SERVER_BUSY answers given.
    rate_limited: u64,
    deferred: u64,
    /// Devices added from now on send in datagrams, retransmitted by their QoS engine
    /// (the default `Uplink::Datagram`); `false`: on the stream.
    datagram_sends: bool,
}

fn stream_frame(f: &Frame) -> bool {
    !f.kind().prefers_datagram()
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path(), Durability::Normal).unwrap());
        let now = Instant::now();
        World {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            store,
            _server_dir: dir,
            start: now,
            now,
            q: EventQueue::default(),
            devs: vec![],
            down_stream_extra: Duration::ZERO,
            rng: rand::SeedableRng::seed_from_u64(42),
            rate: None,
            busy: 0.0,
            rate_limited: 0,
            deferred: 0,
            datagram_sends: false,
        }
    }

    fn add_device(&mut self, user: &str, link: LinkConfig, seed: u64, full_history: bool) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), user).unwrap();
        let qos = if self.datagram_sends {
            QosConfig::default()
        } else {
            QosConfig::over_reliable_stream()
        };
        let config = SyncConfig {
            qos,
            gap_wait: Duration::from_millis(300),
            sync_page: 20,
            full_history_sync: full_history,
            datagram_sends: self.datagram_sends,
        };
        self.devs.push(Device {
            config: config.clone(),
            user: user.into(),
            device: format!("{user}-phone"),
            db,
            _dir: dir,
            sync: SyncMachine::new(config, self.now),
            epoch: 0,
            online: false,
            path_loss: link.loss,
            up: Link::new(link.clone(), self.start, seed),
            down: Link::new(link, self.start, seed ^ 0x9e37_79b9),
            up_stream_free: self.now,
            down_stream_free: self.now,
            announced: vec![],
            push_qos: Sender::new(QosConfig::default(), self.now),
            logs: vec![],
            bucket: None,
            tail: vec![],
            order: SendOrder::default(),
        });
        self.devs.len() - 1
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    /// Drains what a device's machine wants sent or told, and arms its timer.
    fn drain(&mut self, dev: usize) {
        let now = self.now;
        let d = &mut self.devs[dev];
        while let Some(t) = d.sync.poll_transmit() {
            let (frame, flags) = (t.frame, t.flags);
            let len = frame.to_bytes(flags).len();
            let arrivals = d.up.transmit(now, len);
            let ev = |frame| Ev::ToServer {
                dev,
                epoch: d.epoch,
                frame,
            };
            if stream_frame(&frame) || t.reliable {
                // Reliable and ordered: a lost packet is resent by the transport, and
                // everything behind it waits.
                let base = arrivals
                    .first()
                    .copied()
                    .unwrap_or(now + Duration::from_millis(400));
                let at = base.max(d.up_stream_free);
                d.up_stream_free = at;
                self.q.push(at, ev(frame));
            } else {
                for at in arrivals {
                    self.q.push(at, ev(frame.clone()));
                }
            }
        }
        while let Some(event) = d.sync.poll_event() {
            if let SyncEvent::Applied(applied) = event {
                for m in applied.new_messages {
                    d.announced.push(String::from_utf8(m.body).unwrap());
                }
            }
        }
        if let Some(at) = d.sync.poll_timeout() {
            self.q.push(at.max(now), Ev::Timer { dev });
        }
    }

    fn push_down(&mut self, dev: usize, frame: Frame) {
        self.push_down_flags(dev, frame, 0)
    }

    fn push_down_flags(&mut self, dev: usize, frame: Frame, flags: u8) {
        let now = self.now;
        let extra = self.down_stream_extra;
        let d = &mut self.devs[dev];
        if !d.online {
            return;
        }
        let len = frame.to_bytes(flags).len();
        let arrivals = d.down.transmit(now, len);
        let epoch = d.epoch;
        // Send results go the way the device's sends came (as the server answers).
        let on_stream = stream_frame(&frame)
            || (matches!(frame, Frame::SendResult(_)) && !d.config.datagram_sends);
        if on_stream {
            let base = arrivals
                .first()
                .copied()
                .unwrap_or(now + Duration::from_millis(400));
            let at = (base + extra).max(d.down_stream_free);
            d.down_stream_free = at;
            self.q.push(at, Ev::ToClient { dev, epoch, frame });
        } else {
            for at in arrivals {
                self.q.push(
                    at,
                    Ev::ToClient {
                        dev,
                        epoch,
                        frame: frame.clone(),
                    },
                );
            }
        }
    }

    /// Pushes new entries once (no server retransmission) to the online devices of
    /// their owner, or of every member for a large group's log, except `except`.
    fn fan_out(&mut self, fanout: Vec<Fanout>, except: Option<usize>) {
        for f in fanout {
            let (users, log) = match &f.log {
                None => (vec![f.user.clone()], String::new()),
                Some(route) => {
                    let info = self.block(self.store.group_info(&route.group)).unwrap();
                    (
                        info.map(|i| i.members).unwrap_or_default(),
                        route.group.clone(),
                    )
                }
            };
            for dev in 0..self.devs.len() {
                let d = &mut self.devs[dev];
                if Some(dev) == except || !d.online || !users.contains(&d.user) {
                    continue;
                }
                let number = if log.is_empty() {
                    0
                } else {
                    match d.logs.iter().position(|l| *l == log) {
                        Some(i) => i as u32 + 1,
                        None => {
                            d.logs.push(log.clone());
                            d.logs.len() as u32
                        }
                    }
                };
                let push = Frame::Push(pb::Push {
                    entry: Some(f.entry.clone()),
                    log: log.clone(),
                });
                let key = (number, f.entry.seq);
                if !d.push_qos.has_room() {
                    // Window full: kept as the log's tail, pushed when there is room.
                    d.keep_tail(key, push);
                    continue;
                }
                if d.push_qos
                    .try_send_with(key, push.clone(), self.now)
                    .is_err()
                {
                    continue; // already pending
                }
                self.arm_server(dev);
                self.push_down(dev, push);
            }
        }
    }

    fn arm_server(&mut self, dev: usize) {
        if let Some(at) = self.devs[dev].push_qos.poll_timeout() {
            self.q.push(at.max(self.now), Ev::ServerTimer { dev });
        }
    }

    /// A send next in the device's order: deferred at random (busy), else the real
    /// store's answer; the store's `OUT_OF_ORDER` resyncs the reassembly queue.
    fn store_send(&mut self, dev: usize, m: pb::ChatMessage) {
        if self.busy > 0.0 && rand::Rng::random_bool(&mut self.rng, self.busy) {
            self.deferred += 1;
            self.push_down(dev, refusal(m.client_msg_id, ErrorCode::ServerBusy, 0));
            return;
        }
        let (user, device) = (self.devs[dev].user.clone(), self.devs[dev].device.clone());
        let kind = pb::ConversationKind::try_from(m.kind).unwrap();
        let stored = self.block(self.store.store_message(NewMessage {
            sender: user,
            client_msg_id: ClientMsgId::from_slice(&m.client_msg_id).unwrap(),
            recipient: m.recipient,
            kind,
            content_type: m.content_type,
            body: m.body,
            client_ts_ms: m.client_ts_ms,
            require_known_recipient: false,
            to_service: false,
            from_backend: false,
            device,
            send_seq: m.send_seq,
        }));
        match stored {
            Ok(s) => {
                let r = pb::SendResult {
                    client_msg_id: m.client_msg_id,
                    code: ErrorCode::Ok as i32,
                    server_msg_id: s.server_msg_id,
                    seq: s.sender_seq,
                    server_ts_ms: s.server_ts_ms,
                    log_seq: s.log_seq,
                    expected_send_seq: 0,
                };
                self.fan_out(s.fanout, Some(dev));
                self.push_down(dev, Frame::SendResult(r));
            }
            Err(StoreError::OutOfOrder { expected }) => {
                self.push_down(
                    dev,
                    refusal(m.client_msg_id, ErrorCode::OutOfOrder, expected),
                );
                for m in self.devs[dev].order.resync(expected) {
                    self.store_send(dev, m);
                }
            }
            Err(e) => panic!("store refused a send: {e}"),
        }
    }

    /// The model server session: the real store's answers to one frame.
    fn on_server(&mut self, dev: usize, frame: Frame) {
        let (user, device) = (self.devs[dev].user.clone(), self.devs[dev].device.clone());
        let store = self.store.clone();
        let now = self.now;
        // The send budget: every frame but ACKs (as the real session counts them).
        let budgeted = !matches!(frame, Frame::DeliveryAck(_));
        if let (true, Some(b)) = (budgeted, &mut self.devs[dev].bucket) {
            if !b.take(now) {
                if let Frame::Chat(m) = frame {
                    self.rate_limited += 1;
                    self.push_down(dev, refusal(m.client_msg_id, ErrorCode::RateLimited, 0));
                }
                return;
            }
        }
        match frame {
            Frame::Chat(m) => {
                let id = m.client_msg_id.clone();
                match self.devs[dev].order.admit(m) {
                    Admit::Store(sends) => {
                        for m in sends {
                            self.store_send(dev, m);
                        }
                    }
                    Admit::Held { expected } if self.devs[dev].config.datagram_sends => {
                        self.push_down(dev, refusal(id, ErrorCode::OutOfOrder, expected))
                    }
                    Admit::Held { .. } => {}
                    Admit::Refuse { expected } => {
                        self.push_down(dev, refusal(id, ErrorCode::OutOfOrder, expected))
                    }
                }
            }
            Frame::DeliveryAck(a) => {
                let d = &mut self.devs[dev];
                let number = if a.log.is_empty() {
                    Some(0)
                } else {
                    d.logs
                        .iter()
                        .position(|l| *l == a.log)
                        .map(|i| i as u32 + 1)
                };
                if let Some(number) = number {
                    let acked: Vec<(u32, u64)> = d
                        .push_qos
                        .pending()
                        .filter(|(l, s)| {
                            *l == number && (*s <= a.cumulative_seq || a.seqs.contains(s))
                        })
                        .copied()
                        .collect();
                    for key in acked {
                        d.push_qos.on_ack(key, self.now);
                    }
                }
                let tails = d.take_tails(self.now);
                if !tails.is_empty() {
                    self.arm_server(dev);
                }
                for frame in tails {
                    self.push_down(dev, frame);
                }
                if a.log.is_empty() && a.cumulative_seq > 0 {
                    let fanout = self
                        .block(store.ack_delivered(&user, &device, a.cumulative_seq))
                        .unwrap();
                    self.fan_out(fanout, None);
                }
            }
            Frame::SyncRequest(r) => {
                let owner = if r.log.is_empty() {
                    user
                } else {
                    assert!(self.block(store.log_member(&user, &r.log)).unwrap());
                    log_key(&r.log)
                };
                let page = self
                    .block(store.timeline(&owner, r.after_seq, r.until_seq, r.limit))
                    .unwrap();
                self.push_down(
                    dev,
                    Frame::SyncResponse(pb::SyncResponse {
                        request_id: r.request_id,
                        entries: page.entries,
                        more: page.more,
                        head_seq: page.head_seq,
                        log: r.log,
                    }),
                );
            }
            Frame::SummariesRequest(r) => {
                let page = self
                    .block(store.summaries(&user, r.last_messages, r.limit))
                    .unwrap();
                self.push_down(
                    dev,
                    Frame::Summaries(pb::Summaries {
                        request_id: r.request_id,
                        conversations: page.conversations,
                        head_seq: page.head_seq,
                        more: page.more,
                    }),
                );
            }
            Frame::LogsRequest(r) => {
                let (groups, more) = self.block(store.logs(&user, 5)).unwrap();
                self.push_down(
                    dev,
                    Frame::Logs(pb::Logs {
                        request_id: r.request_id,
                        groups,
                        more,
                    }),
                );
            }
            Frame::MarkRead(r) => {
                let kind = pb::ConversationKind::try_from(r.kind).unwrap();
                let fanout = self
                    .block(store.mark_read(&user, kind, &r.conversation, r.up_to_seq, 100))
                    .unwrap();
                self.push_down(
                    dev,
                    Frame::OpResult(pb::OpResult {
                        request_id: r.request_id,
                        code: ErrorCode::Ok as i32,
                        message: String::new(),
                    }),
                );
                self.fan_out(fanout, None);
            }
            other => panic!("the model server got an unexpected {:?}", other.kind()),
        }
    }

    fn connect_at(&mut self, dev: usize, at: Duration) {
        self.q.push(self.start + at, Ev::Connect { dev });
    }

    /// A blackout: the connection drops at `at` and the device reconnects after `len`.
    fn blackout(&mut self, dev: usize, at: Duration, len: Duration) {
        self.q.push(self.start + at, Ev::Drop { dev });
        self.q.push(self.start + at + len, Ev::Connect { dev });
    }

    fn run_until(&mut self, t: Duration) {
        let deadline = self.start + t;
        let mut steps = 0u64;
        while let Some(at) = self.q.peek_time() {
            steps += 1;
            if std::env::var("SIM_DEBUG").is_ok() && steps % 20000 == 0 {
                eprintln!(
                    "t={:?} steps={steps} q={} deferred={} rl={}",
                    at - self.start,
                    self.q.len(),
                    self.deferred,
                    self.rate_limited
                );
            }
            if at > deadline {
                break;
            }
            let (at, ev) = self.q.pop().unwrap();
            self.now = self.now.max(at);
            let now = self.now;
            match ev {
                Ev::ToServer { dev, epoch, frame } => {
                    if epoch == self.devs[dev].epoch && self.devs[dev].online {
                        self.on_server(dev, frame);
                    }
                }
                Ev::ToClient { dev, epoch, frame } => {
                    let d = &mut self.devs[dev];
                    if epoch == d.epoch && d.online {
                        let rest = d.sync.handle_frame(frame, now, &mut d.db).unwrap();
                        assert!(
                            rest.is_none_or(|f| matches!(f, Frame::OpResult(_))),
                            "the machine handed back a frame it owns"
                        );
                        self.drain(dev);
                    }
                }
                Ev::Timer { dev } => {
                    let d = &mut self.devs[dev];
                    if d.sync.poll_timeout().is_some_and(|t| t <= now) {
                        d.sync.handle_timeout(now, &mut d.db).unwrap();
                        self.drain(dev);
                    }
                }
                Ev::ServerTimer { dev } => {
                    let d = &mut self.devs[dev];
                    if !d.online {
                        continue;
                    }
                    if d.push_qos.poll_timeout().is_none_or(|t| t > now) {
                        // Stale (its push was acknowledged): wait for the next deadline.
                        self.arm_server(dev);
                        continue;
                    }
                    d.push_qos.handle_timeout(now);
                    let mut resend = vec![];
                    while let Some(ev) = d.push_qos.poll_event() {
                        match ev {
                            SenderEvent::Retransmit(key) => {
                                resend.extend(d.push_qos.payload(&key).cloned());
                            }
                            // Given up: kept as the log's tail (as the server does).
                            SenderEvent::Failed { key, .. } => {
                                if let Some(f) = d.push_qos.take_failed(&key) {
                                    d.keep_tail(key, f);
                                }
                            }
                        }
                    }
                    resend.extend(d.take_tails(now));
                    for frame in resend {
                        self.push_down_flags(dev, frame, FLAG_RETRANSMIT);
                    }
                    self.arm_server(dev);
                }
                Ev::Restart { dev } => {
                    let d = &mut self.devs[dev];
                    d.online = false;
                    d.epoch += 1;
                    d.sync = SyncMachine::new(d.config.clone(), now);
                    d.push_qos = Sender::new(QosConfig::default(), now);
                    d.logs.clear();
                    d.tail.clear();
                }
                Ev::Drop { dev } => {
                    let d = &mut self.devs[dev];
                    d.online = false;
                    d.push_qos = Sender::new(QosConfig::default(), now);
                    d.logs.clear();
                    d.tail.clear();
                    d.epoch += 1;
                    d.sync.on_disconnected();
                }
                Ev::Connect { dev } => {
                    let (user, device) =
                        (self.devs[dev].user.clone(), self.devs[dev].device.clone());
                    let head = self.block(self.store.head_seq(&user)).unwrap();
                    let next_send_seq = self
                        .block(self.store.next_send_seq(&user, &device))
                        .unwrap();
                    let (send_rate_per_sec, send_burst) = self.rate.unwrap_or((0, 0));
                    let login = LoginInfo {
                        head,
                        next_send_seq,
                        send_rate_per_sec,
                        send_burst,
                        store_generation: 0,
                        restored_seq: 0,
                    };
                    let d = &mut self.devs[dev];
                    d.order = SendOrder::new(next_send_seq);
                    d.bucket = self.rate.map(|(r, b)| TokenBucket::new(r, b, now));
                    d.online = true;
                    d.epoch += 1;
                    d.up_stream_free = now;
                    d.down_stream_free = now;
                    d.sync.on_connected(login, now, &mut d.db).unwrap();
                    let path = |sent: u64, lost: u64| PathSample {
                        sent,
                        lost,
                        bytes: sent * 20,
                        cwnd: 120_000,
                        rtt: Duration::from_millis(100),
                    };
                    d.sync.on_path_sample(path(0, 0), now);
                    let lost = (d.path_loss * 1_000.0) as u64;
                    d.sync
                        .on_path_sample(path(1_000, lost), now + Duration::from_secs(1));
                    self.drain(dev);
                }
            }
        }
        self.now = self.now.max(deadline);
    }

    /// Queues `text` in a device's outbox and lets the machine send it.
    fn send(&mut self, dev: usize, to: &str, kind: ConversationKind, text: &str) {
        let now = self.now;
        let id = ClientMsgId::generate(1, &mut self.rng);
        let d = &mut self.devs[dev];
        d.db.enqueue(id, to, kind, 0, text.as_bytes(), 1).unwrap();
        d.sync.flush(now, &mut d.db).unwrap();
        self.drain(dev);
    }

    /// Creates a group in the server's store (as the HTTP API would).
    fn create_group(&self, id: &str, owner: &str, members: &[&str], large: bool) -> String {
        let op = GroupOp::Create {
            id: id.into(),
            name: id.into(),
            owner: owner.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            large,
        };
        self.block(self.store.group_op(op, LIMITS))
            .unwrap()
            .info
            .group
    }

    /// Queues every text of `texts`, in order.
    fn send_all(&mut self, dev: usize, to: &str, kind: ConversationKind, texts: &[String]) {
        for t in texts {
            self.send(dev, to, kind, t);
        }
    }

    /// A conversation as the device shows it, oldest first.
    fn shown(
        &self,
        dev: usize,
        kind: ConversationKind,
        with: &str,
    ) -> Vec<(String, MessageStatus)> {
        let mut m = self.devs[dev]
            .db
            .messages(kind, with, None, 100_000)
            .unwrap();
        m.reverse();
        m.into_iter()
            .map(|m| (String::from_utf8(m.body).unwrap(), m.status))
            .collect()
    }

    fn head(&self, user: &str) -> u64 {
        self.block(self.store.head_seq(user)).unwrap()
    }
}

fn refusal(client_msg_id: bytes::Bytes, code: ErrorCode, expected_send_seq: u64) -> Frame {
    Frame::SendResult(pb::SendResult {
        client_msg_id,
        code: code as i32,
        expected_send_seq,
        ..Default::default()
    })
}

/// A world with alice and bob on `link` (seeds `seed`, `seed + 1`); bob downloads
/// his whole history when `bob_full_history`.
fn alice_and_bob(link: LinkConfig, seed: u64, bob_full_history: bool) -> (World, usize, usize) {
    let mut w = World::new();
    let alice = w.add_device("alice", link.clone(), seed, true);
    let bob = w.add_device("bob", link, seed + 1, bob_full_history);
    (w, alice, bob)
}

const LIMITS: GroupLimits = GroupLimits {
    members: 10,
    large_members: 100,
};

fn texts(n: std::ops::Range<usize>) -> Vec<String> {
    n.map(|i| format!("m {i}")).collect()
}

fn lossy() -> LinkConfig {
    LinkConfig {
        loss: 0.2,
        delay: Duration::from_millis(40),
        jitter: Duration::from_millis(30),
        reorder: 0.1,
        reorder_delay: Duration::from_millis(80),
        duplicate: 0.05,
        ..LinkConfig::default()
    }
}

/// 200 messages through loss, reordering, duplication and two blackouts of the
/// receiver: the receiver shows exactly the sender's sequence, its cursor reaches the
/// server's head, and every sent message ends Sent or Delivered at the sender.
#[test]
fn a_burst_arrives_once_in_order_through_loss_and_blackouts() {
    for seed in [1u64, 2, 3] {
        let mut w = World::new();
        let alice = w.add_device("alice", lossy(), seed, true);
        let bob = w.add_device("bob", lossy(), seed + 100, true);
        w.connect_at(alice, Duration::ZERO);
        w.connect_at(bob, Duration::ZERO);
        w.blackout(bob, Duration::from_secs(3), Duration::from_secs(4));
        w.blackout(bob, Duration::from_secs(12), Duration::from_secs(2));
        w.run_until(Duration::from_millis(500));
        let want = texts(0..200);
        for (i, t) in want.iter().enumerate() {
            w.send(alice, "bob", ConversationKind::Direct, t);
            w.run_until(Duration::from_millis(500 + 60 * i as u64));
        }
        w.run_until(Duration::from_secs(60));
        let got: Vec<String> = w
            .shown(bob, ConversationKind::Direct, "alice")
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(got, want, "seed {seed}: bob's order is alice's order, once");
        assert_eq!(
            w.devs[bob].announced, want,
            "seed {seed}: announced once each, in order"
        );
        assert_eq!(
            w.devs[bob].db.cursor().unwrap(),
            w.head("bob"),
            "seed {seed}"
        );
        let sent = w.shown(alice, ConversationKind::Direct, "bob");
        assert_eq!(sent.len(), 200);
        // The receipts of the tail too: the ACK of the last sync page is reliable.
        let not_delivered: Vec<&String> = sent
            .iter()
            .filter(|(_, s)| *s != MessageStatus::Delivered)
            .map(|(t, _)| t)
            .collect();
        assert!(
            not_delivered.is_empty(),
            "seed {seed}: still not delivered: {not_delivered:?}"
        );
    }
}

/// The delivered receipt (a datagram push) overtakes the `SendResult` (on a stalled
/// stream): the late `SendResult` must land on Delivered, not Sent.
#[test]
fn a_receipt_that_overtakes_its_send_result_is_kept() {
    let mut w = World::new();
    w.down_stream_extra = Duration::from_millis(500);
    let clean = LinkConfig::lossy(0.0, Duration::from_millis(20));
    let alice = w.add_device("alice", clean.clone(), 7, true);
    let bob = w.add_device("bob", clean, 8, true);
    w.connect_at(alice, Duration::ZERO);
    w.connect_at(bob, Duration::ZERO);
    w.run_until(Duration::from_secs(2));
    for t in texts(0..20) {
        w.send(alice, "bob", ConversationKind::Direct, &t);
    }
    w.run_until(Duration::from_secs(10));
    let sent = w.shown(alice, ConversationKind::Direct, "bob");
    assert_eq!(sent.len(), 20);
    assert!(
        sent.iter().all(|(_, s)| *s == MessageStatus::Delivered),
        "{sent:?}"
    );
}

/// Summaries come before sync. A fresh install without full history starts at the head
/// (nothing old downloaded, nothing missed after it); one with full history gets the
/// whole backlog, in order, once.
#[test]
fn summaries_before_sync_on_a_fresh_install() {
    for full in [false, true] {
        let (mut w, alice, bob) = alice_and_bob(lossy(), 5, full);
        w.connect_at(alice, Duration::ZERO);
        w.run_until(Duration::from_millis(200));
        let backlog = texts(0..50);
        w.send_all(alice, "bob", ConversationKind::Direct, &backlog);
        w.run_until(Duration::from_secs(10));
        assert_eq!(w.head("bob"), 50);
        w.connect_at(bob, Duration::from_secs(10));
        w.run_until(Duration::from_secs(15));
        let later = texts(50..70);
        for t in &later {
            w.send(alice, "bob", ConversationKind::Direct, t);
            w.run_until(w.now - w.start + Duration::from_millis(50));
        }
        w.run_until(Duration::from_secs(40));
        let got: Vec<String> = w
            .shown(bob, ConversationKind::Direct, "alice")
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        if full {
            let all: Vec<String> = backlog.iter().chain(&later).cloned().collect();
            assert_eq!(got, all, "full history: the whole backlog, in order, once");
        } else {
            // The summary's last messages are shown; everything after the head arrives.
            assert!(got.ends_with(&later), "{got:?}");
            let before: Vec<&String> = got.iter().take(got.len() - later.len()).collect();
            assert!(
                before.len() <= 5,
                "only the summary's last messages: {before:?}"
            );
            assert!(
                before
                    .iter()
                    .zip(backlog.iter().rev().take(5).rev())
                    .all(|(a, b)| *a == b),
                "{before:?}"
            );
        }
        assert_eq!(w.devs[bob].db.cursor().unwrap(), w.head("bob"));
        let conv = w.devs[bob]
            .db
            .conversation(ConversationKind::Direct, "alice")
            .unwrap()
            .unwrap();
        assert_eq!(
            conv.unread, 70,
            "unread counts the whole backlog either way"
        );
    }
}

/// A large group's log: bob is added while offline, alice keeps writing; at login the
/// `Logs` answer (with bob's join position) arrives before the join event in his
/// timeline. Bob gets every message from his join on, once, in order, and none from
/// before it; the log cursor reaches the log's head.
#[test]
fn a_large_group_join_event_after_the_log_answer() {
    let (mut w, alice, bob) = alice_and_bob(lossy(), 9, true);
    let group = w.create_group("gbig", "alice", &["alice", "carol"], true);
    w.connect_at(alice, Duration::ZERO);
    w.run_until(Duration::from_millis(200));
    let before = texts(0..30);
    w.send_all(alice, &group, ConversationKind::Group, &before);
    w.run_until(Duration::from_secs(5));
    w.block(w.store.group_op(
        GroupOp::Add {
            group: group.clone(),
            by: Some("alice".into()),
            members: vec!["bob".into()],
        },
        LIMITS,
    ))
    .unwrap();
    let after = texts(30..60);
    for t in &after[..10] {
        w.send(alice, &group, ConversationKind::Group, t);
    }
    w.run_until(Duration::from_secs(8));
    w.connect_at(bob, Duration::from_secs(8));
    w.run_until(Duration::from_millis(8_050));
    for (i, t) in after[10..].iter().enumerate() {
        w.send(alice, &group, ConversationKind::Group, t);
        w.run_until(Duration::from_millis(8_100 + 40 * i as u64));
    }
    w.run_until(Duration::from_secs(40));
    let got: Vec<String> = w
        .shown(bob, ConversationKind::Group, &group)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert_eq!(got, after, "from the join on, once, in order");
    let log_head = w.head(&log_key(&group));
    assert_eq!(w.devs[bob].db.log_cursor(&group).unwrap(), log_head);
}

/// The app is killed at `at` and started again (logging in) after `down`.
fn restart(w: &mut World, dev: usize, at: Duration, down: Duration) {
    w.q.push(w.start + at, Ev::Restart { dev });
    w.q.push(w.start + at + down, Ev::Connect { dev });
}

/// The bodies of a conversation as the device shows it, oldest first.
fn bodies(w: &World, dev: usize, kind: ConversationKind, with: &str) -> Vec<String> {
    w.shown(dev, kind, with)
        .into_iter()
        .map(|(t, _)| t)
        .collect()
}

/// One run of the ordering rule under everything that used to break it: an outbox of
/// 300 written offline flushes into a server that defers sends at random (SERVER_BUSY,
/// probability `busy`) and rate limits, over links losing `loss` of datagrams with
/// reordering and duplication, while the sender's connection drops and its app is
/// killed and restarted mid-burst at `restart_at`. The receiver must show exactly the
/// sender's order, once, and nothing may end failed.
fn ordering_run(seed: u64, busy: f64, loss: f64, restart_at: Duration, datagrams: bool) {
    let mut w = World::new();
    w.datagram_sends = datagrams;
    w.rng = rand::SeedableRng::seed_from_u64(seed);
    w.busy = busy;
    w.rate = Some((50, 100));
    let link = LinkConfig { loss, ..lossy() };
    let alice = w.add_device("alice", link.clone(), seed, true);
    let bob = w.add_device("bob", link, seed + 100, true);
    let want = texts(0..300);
    w.send_all(alice, "bob", ConversationKind::Direct, &want);
    w.connect_at(bob, Duration::ZERO);
    w.connect_at(alice, Duration::from_millis(100));
    w.blackout(alice, Duration::from_millis(1500), Duration::from_secs(1));
    restart(&mut w, alice, restart_at, Duration::from_millis(500));
    // Up to 30 % of sends deferred, each pausing the outbox for a second: give it time.
    w.run_until(Duration::from_secs(600));
    assert_eq!(
        bodies(&w, bob, ConversationKind::Direct, "alice"),
        want,
        "seed {seed} busy {busy} loss {loss} datagrams {datagrams}: bob's order is alice's order, once"
    );
    let sent = w.shown(alice, ConversationKind::Direct, "bob");
    assert!(
        sent.iter()
            .all(|(_, s)| matches!(s, MessageStatus::Sent | MessageStatus::Delivered)),
        "seed {seed}: {sent:?}"
    );
}

#[test]
fn a_burst_keeps_the_senders_order_through_deferrals_loss_and_restarts() {
    for seed in [11u64, 12] {
        for datagrams in [true, false] {
            ordering_run(seed, 0.15, 0.2, Duration::from_secs(4), datagrams);
        }
    }
}

/// A reconnect with more sends in flight than the send budget pays for at once, on the
/// stream uplink (the app restarted, then its connection replaced before the answers
/// came): the sends past the budget must go again. They were skipped as copies for the
/// engine's timer, which the stream's engine never runs, so 21 sends failed after two
/// minutes and the 70 behind them, held by the server behind the gap, with them. The
/// case the ordering property below found (its seed is kept in the regression file too).
#[test]
fn sends_past_the_budget_at_a_reconnect_go_again_on_the_stream() {
    ordering_run(246_602, 0.0, 0.247, Duration::from_millis(1_367), false);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 6, ..Default::default() })]

    /// The same rule for random deferral rates, losses and restart times.
    #[test]
    fn the_ordering_rule_holds_for_any_deferrals_losses_and_restarts(
        seed in 0u64..1_000_000,
        busy in 0.0f64..0.3,
        loss in 0.0f64..0.3,
        restart_ms in 500u64..8_000,
        datagrams in proptest::bool::ANY,
    ) {
        ordering_run(seed, busy, loss, Duration::from_millis(restart_ms), datagrams);
    }
}

/// An outbox of 1,000 flushes paced to the budget the server announced (50/s, burst
/// 200): not one RATE_LIMITED, in order, and about as fast as the budget allows
/// ((1,000 - 200) / 50 = 16 s, plus the frames that are not sends).
#[test]
fn an_outbox_flush_paced_to_the_budget_is_never_refused() {
    let mut w = World::new();
    w.rate = Some((50, 200));
    let clean = LinkConfig::lossy(0.0, Duration::from_millis(30));
    let alice = w.add_device("alice", clean.clone(), 21, true);
    let bob = w.add_device("bob", clean, 22, true);
    let want = texts(0..1000);
    w.send_all(alice, "bob", ConversationKind::Direct, &want);
    w.connect_at(bob, Duration::ZERO);
    w.connect_at(alice, Duration::ZERO);
    w.run_until(Duration::from_secs(22));
    assert_eq!(w.rate_limited, 0, "no send was refused by the rate limit");
    let sent = w.shown(alice, ConversationKind::Direct, "bob");
    let pending = sent
        .iter()
        .filter(|(_, s)| *s == MessageStatus::Pending)
        .count();
    assert_eq!(pending, 0, "all 1,000 stored within 22 s at 50/s + 200");
    w.run_until(Duration::from_secs(40));
    assert_eq!(bodies(&w, bob, ConversationKind::Direct, "alice"), want);
    assert_eq!(w.rate_limited, 0);
}

/// Three members of a group burst into it at once, with deferrals and loss: each
/// sender's messages keep their order, and every member sees one identical order.
#[test]
fn a_group_burst_keeps_each_senders_order_and_one_order_for_all() {
    for seed in [31u64, 32] {
        let mut w = World::new();
        w.rng = rand::SeedableRng::seed_from_u64(seed);
        w.busy = 0.1;
        let names = ["ann", "ben", "cat"];
        let devs: Vec<usize> = names
            .iter()
            .enumerate()
            .map(|(i, n)| w.add_device(n, lossy(), seed * 10 + i as u64, true))
            .collect();
        let group = w.create_group("gteam", "ann", &names, false);
        for &d in &devs {
            w.connect_at(d, Duration::ZERO);
        }
        w.run_until(Duration::from_millis(300));
        for i in 0..60 {
            for (k, &d) in devs.iter().enumerate() {
                w.send(
                    d,
                    &group,
                    ConversationKind::Group,
                    &format!("{} {i}", names[k]),
                );
            }
            w.run_until(Duration::from_millis(300 + 20 * i));
        }
        w.run_until(Duration::from_secs(90));
        let seen: Vec<Vec<String>> = devs
            .iter()
            .map(|&d| bodies(&w, d, ConversationKind::Group, &group))
            .collect();
        assert_eq!(seen[0].len(), 180, "seed {seed}");
        assert!(
            seen.iter().all(|s| *s == seen[0]),
            "seed {seed}: one order for all"
        );
        for n in names {
            let mine: Vec<String> = seen[0]
                .iter()
                .filter(|t| t.starts_with(n))
                .cloned()
                .collect();
            let want: Vec<String> = (0..60).map(|i| format!("{n} {i}")).collect();
            assert_eq!(mine, want, "seed {seed}: {n}'s order");
        }
    }
}

/// A device whose numbers went back (its database was lost or restored to an older
/// copy, same device id): the server's next send seq is ahead of everything it
/// queues. It renumbers and its messages arrive, in order, once.
#[test]
fn a_device_whose_send_numbers_went_back_renumbers_and_keeps_order() {
    let (mut w, alice, bob) = alice_and_bob(lossy(), 41, true);
    w.connect_at(alice, Duration::ZERO);
    w.connect_at(bob, Duration::ZERO);
    w.run_until(Duration::from_millis(200));
    let first = texts(0..10);
    w.send_all(alice, "bob", ConversationKind::Direct, &first);
    w.run_until(Duration::from_secs(10));
    // The app's data is lost; the device id stays (as after a restore).
    w.q.push(w.now, Ev::Restart { dev: alice });
    w.run_until(Duration::from_millis(10_001));
    let dir = tempfile::tempdir().unwrap();
    w.devs[alice].db = Db::open(dir.path(), "alice").unwrap();
    w.devs[alice]._dir = dir;
    let second = texts(10..20);
    w.send_all(alice, "bob", ConversationKind::Direct, &second);
    w.connect_at(alice, Duration::from_secs(11));
    w.run_until(Duration::from_secs(40));
    let want: Vec<String> = first.iter().chain(&second).cloned().collect();
    assert_eq!(bodies(&w, bob, ConversationKind::Direct, "alice"), want);
    let sent = w.shown(alice, ConversationKind::Direct, "bob");
    assert!(
        sent.iter().all(|(_, s)| *s != MessageStatus::Pending),
        "{sent:?}"
    );
}
