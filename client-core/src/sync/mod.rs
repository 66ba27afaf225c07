//! The client's sync logic as a sans-IO state machine.
//!
//! Everything that decides *what* a client sends and stores lives here: the outbox and
//! its retransmission (a [`qos::Sender`] that keeps each unacknowledged `Chat`), sends
//! the server deferred, the read-mark queue, summaries before sync, sync pages above
//! the cursor, gap detection with its short wait and the exact-range gap pull, and the
//! large groups' log cursors. Like `quinn-proto`'s `Connection`, the machine is told the
//! time (`now`), fed inputs ([`SyncMachine::on_connected`], [`SyncMachine::handle_frame`],
//! [`SyncMachine::flush`], [`SyncMachine::handle_timeout`]), and asked what to send
//! ([`SyncMachine::poll_transmit`]), what to tell the app ([`SyncMachine::poll_event`])
//! and when to wake it ([`SyncMachine::poll_timeout`]). It owns no socket, no clock and
//! no task; the async driver in `connection/` moves bytes and timers, and the tests
//! in `tests/sync_sim.rs` drive it against a model server through `protocol::sim`
//! links in virtual time.
//!
//! It reads and writes the device's own SQLite store ([`Db`]) directly rather than
//! emitting database effects: every decision here depends on the store's answer right
//! after a write (the cursor once a page is applied, the first held seq above a gap),
//! and the store is local, synchronous and deterministic, so the machine stays
//! replayable in a test with a real store in a temporary directory.
//!
//! Files: this one (state, inputs and the gap timer), `pushes.rs` (live pushes, those
//! that arrived together stored and acknowledged together), `pages.rs` (sync pages,
//! several in flight, and the exact-range gap pull), `sends.rs` (the outbox in the
//! device's send order, paced to the budget, deferrals, `OUT_OF_ORDER`), `logs.rs`
//! (large groups' logs).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tern_protocol::dedup::{DedupConfig, DuplicateFilter};
use tern_protocol::frame::{FLAG_RETRANSMIT, Frame};
use tern_protocol::qos::{QosConfig, Sender, SenderEvent};
use tern_protocol::rate::TokenBucket;
use tern_protocol::redundancy::{LossMeter, PathSample, copy_delay};
use tern_protocol::{ClientMsgId, ErrorCode, pb, unix_ms};

use crate::store::{Applied, Db, DbError};
use crate::types::{ConversationKind, MessageStatus};

mod logs;
mod pages;
mod pushes;
mod sends;

pub use pages::PAGES_IN_FLIGHT;
pub use pushes::MAX_PUSHES_TOGETHER;

/// What the server said at login that the machine needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginInfo {
    /// The head of the user's timeline.
    pub head: u64,
    /// The send seq the server takes next from this device.
    pub next_send_seq: u64,
    /// The send budget: frames per second (0: the server announced none).
    pub send_rate_per_sec: u32,
    /// The send budget: burst.
    pub send_burst: u32,
    /// The server store's generation (0: a server from before generations).
    pub store_generation: u64,
    /// The user's head when the server's store was last restored (0: never).
    pub restored_seq: u64,
}

/// Pause before resending a message the server deferred (rate limited, busy).
pub const SERVER_DEFERRAL: Duration = Duration::from_secs(1);
/// A send unanswered this long, with nothing at all heard from the server since it
/// went, makes the path suspect: the driver probes with fresh connections (see
/// [`SyncMachine::path_suspect`]).
pub const SUSPECT_AFTER: Duration = Duration::from_secs(2);
/// Pause before pulling again after the server answered a sync request with an error.
const SYNC_RETRY: Duration = Duration::from_secs(1);

/// What the machine needs from the client configuration.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Retransmission of sends.
    pub qos: QosConfig,
    /// How long a gap may stay open before it is pulled (a reordered push usually
    /// fills it sooner).
    pub gap_wait: Duration,
    /// Entries per sync page.
    pub sync_page: u32,
    /// A fresh install downloads the whole timeline (else it starts at the head once
    /// the summaries are in; older history is paged from the server on demand).
    pub full_history_sync: bool,
    /// Sends go in datagrams (`false`: on the stream; see `Uplink`).
    pub datagram_sends: bool,
}

/// A frame to send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// The frame.
    pub frame: Frame,
    /// Wire flags ([`FLAG_RETRANSMIT`]).
    pub flags: u8,
    /// Must go on the reliable stream even if its kind prefers a datagram: the ACK of a
    /// sync page, which nothing would resend if it were lost (the pushes that would
    /// have prompted a new ACK belonged to an older connection), so the sender's
    /// receipts for the tail of a catch-up would wait for the next message; and every
    /// send with `Uplink::Stream`.
    pub reliable: bool,
}

/// What the app must be told (the driver turns these into `ClientEvent`s).
#[derive(Debug)]
pub enum SyncEvent {
    /// The store changed: new messages, receipts, updates, conversations.
    Applied(Applied),
    /// An outgoing message's status changed.
    Status {
        /// The message.
        local_id: i64,
        /// Its new status.
        status: MessageStatus,
    },
    /// A sync page was stored.
    Progress {
        /// The cursor (highest contiguous seq stored).
        stored: u64,
        /// The server's head as far as known.
        head: u64,
    },
}

/// Send results after which resending the same message cannot succeed.
pub fn permanent(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::MessageTooLarge
            | ErrorCode::NotAllowed
            | ErrorCode::GroupNotFound
            | ErrorCode::RecipientNotFound
            | ErrorCode::InvalidArgument
    )
}

/// The per-connection part: forgotten when the connection ends.
#[derive(Debug, Default)]
struct Link {
    /// The server's head as far as known.
    head: u64,
    /// Sync pages in flight (see `pages.rs`).
    pages: Vec<pages::PageRequest>,
    /// The highest seq requested by the pages in flight. It outlives the page it came
    /// from: a page cut short is asked again from its last entry while the ranges above
    /// it may be stored already (set back to 0 only when no page is left).
    requested: u64,
    /// When an open gap will be pulled.
    gap_at: Option<Instant>,
    /// Read marks sent, by request id.
    reads: HashMap<u64, (ConversationKind, String, u64)>,
    /// A fresh install that does not download old history: jump to the head once the
    /// summaries are in.
    start_at_head: bool,
    /// Large groups' logs being synced: group -> request id.
    log_syncing: HashMap<String, u64>,
    /// The first send transmitted since the server was last heard from, while sends
    /// are unanswered.
    waiting_since: Option<Instant>,
    /// Pages in a row that brought nothing while the server said there was more (a
    /// misbehaving server): the next pull waits, doubling.
    empty_pages: u32,
    /// When the backed-off pull goes out.
    pull_at: Option<Instant>,
    /// Second copies of sends due (a lossy path, [`tern_protocol::redundancy`]), in
    /// time order; at most one window's worth.
    copies: VecDeque<(Instant, ClientMsgId)>,
}

/// The client's sync and send logic (see the module docs).
#[derive(Debug)]
pub struct SyncMachine {
    config: SyncConfig,
    /// Unacknowledged sends, each with the `Chat` it retransmits.
    qos: Sender<ClientMsgId, pb::ChatMessage>,
    /// Pushes already stored (their ACK may have been lost).
    filter: DuplicateFilter<u64>,
    /// The server deferred a send (rate limited, busy): the outbox waits until then,
    /// and goes on from that send, in order.
    paused_until: Option<Instant>,
    /// The send budget announced at login, paced to (`None`: none announced).
    budget: Option<TokenBucket>,
    /// Tokens left for frames other than sends (ACKs, pulls, heartbeats).
    reserve: f64,
    /// The outbox waits for the budget until then.
    paced_at: Option<Instant>,
    /// The latest time an input carried (charges frames queued without one).
    now: Instant,
    /// The path's measured loss: sends go twice while it is lossy.
    loss: LossMeter,
    next_request: u64,
    /// The server store's generation announced at the last login.
    generation: u64,
    /// `None` while disconnected.
    link: Option<Link>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SyncEvent>,
}

impl SyncMachine {
    /// A machine with nothing in flight; `now` anchors the QoS schedule.
    pub fn new(config: SyncConfig, now: Instant) -> Self {
        SyncMachine {
            qos: Sender::new(config.qos.clone(), now),
            config,
            filter: DuplicateFilter::new(DedupConfig::default()),
            paused_until: None,
            budget: None,
            reserve: 0.0,
            paced_at: None,
            now,
            loss: LossMeter::default(),
            next_request: 1,
            generation: 0,
            link: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The send QoS engine (RTT, messages in flight: diagnostics).
    pub fn qos(&self) -> &Sender<ClientMsgId, pb::ChatMessage> {
        &self.qos
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    /// Whether sync pages are in flight (a catch-up under way).
    pub fn catching_up(&self) -> bool {
        self.link.as_ref().is_some_and(|l| !l.pages.is_empty())
    }

    /// The server's head as far as this connection knows.
    pub fn head(&self) -> u64 {
        self.link.as_ref().map_or(0, |l| l.head)
    }

    /// A fresh request id (also for the app's own requests, so ids never collide).
    pub fn next_request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    /// An RTT measured elsewhere (a heartbeat round trip).
    pub fn on_rtt_sample(&mut self, rtt: Duration) {
        self.qos.on_rtt_sample(rtt);
    }

    /// A sample of the transport's path (QUIC's packet counts, window and RTT), now and
    /// then: on a path measured lossy whose window has room, each send datagram goes twice.
    pub fn on_path_sample(&mut self, sample: PathSample, now: Instant) {
        self.loss.on_sample(sample, now);
        tracing::trace!(
            ?sample,
            loss = self.loss.estimate(),
            headroom = self.loss.headroom(),
            copies = self.loss.redundant(),
            "path sample"
        );
    }

    /// Whether sends currently go twice (the path is measured lossy).
    pub fn sends_copied(&self) -> bool {
        self.loss.redundant()
    }

    /// The driver sent a request of its own (an app call): it counts against the send
    /// budget like every frame but ACKs and heartbeats.
    pub fn on_frame_sent(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if let Some(b) = &mut self.budget {
            b.charge(now);
        }
    }

    /// The next frame to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing to tell the app.
    pub fn poll_event(&mut self) -> Option<SyncEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link = self.link.as_ref()?;
        [
            self.qos.poll_timeout(),
            self.paused_until,
            self.paced_at,
            link.gap_at,
            link.pull_at,
            link.copies.front().map(|c| c.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn send(&mut self, frame: Frame) {
        self.push_transmit(frame, 0, false);
    }

    /// Whether the path looks dead while sends wait: one has been unanswered for
    /// [`SUSPECT_AFTER`] with nothing heard from the server since. QUIC backs off its
    /// own probes exponentially during an outage (and an ICMP error does not wake it),
    /// so the driver then races fresh connections, which resume within one probe
    /// interval of the path coming back.
    pub fn path_suspect(&self, now: Instant) -> bool {
        self.suspect_at().is_some_and(|t| now >= t)
    }

    /// When the path becomes suspect if nothing is heard by then (`None`: no send is
    /// waiting for an answer).
    pub fn suspect_at(&self) -> Option<Instant> {
        let since = self.link.as_ref()?.waiting_since?;
        (self.qos.in_flight() > 0).then_some(since + SUSPECT_AFTER)
    }

    /// A send: in a datagram, or on the stream (`Uplink::Stream`).
    fn send_chat(&mut self, chat: pb::ChatMessage, flags: u8) {
        let now = self.now;
        if flags & FLAG_RETRANSMIT != 0 && self.budget_short_for_copy(now) {
            // A copy the budget cannot pay for now would be refused RATE_LIMITED (and
            // pause the outbox): skip it; the engine's next timer sends it again.
            tracing::debug!(
                send_seq = chat.send_seq,
                "retransmission skipped: send budget empty"
            );
            return;
        }
        let on_stream = !self.config.datagram_sends;
        let copy = (!on_stream && self.loss.redundant()).then(|| {
            (
                now + copy_delay(self.qos.rtt().srtt()),
                self.qos.config().window,
            )
        });
        if let Some(l) = self.link.as_mut() {
            l.waiting_since.get_or_insert(now);
            if let Some((copy_at, window)) = copy {
                if l.copies.len() < window {
                    if let Ok(id) = ClientMsgId::from_slice(&chat.client_msg_id) {
                        l.copies.push_back((copy_at, id));
                    }
                }
            }
        }
        self.push_transmit(Frame::Chat(chat), flags, on_stream);
    }

    /// Whether the send budget cannot pay for a copy of a send now (a retransmission or
    /// a second copy) while keeping half the reserve for other frames: such a copy would
    /// draw RATE_LIMITED and pause the outbox, so it is skipped.
    fn budget_short_for_copy(&mut self, now: Instant) -> bool {
        let keep = 1.0 + self.reserve / 2.0;
        self.budget
            .as_mut()
            .is_some_and(|b| b.available(now) < keep)
    }

    /// Sends the second copies that are due, of sends still unanswered.
    fn send_copies(&mut self, now: Instant) {
        loop {
            let Some(l) = self.link.as_mut() else { return };
            let Some(&(at, id)) = l.copies.front() else {
                return;
            };
            if at > now {
                return;
            }
            l.copies.pop_front();
            let Some(chat) = self.qos.payload(&id).cloned() else {
                continue; // answered (or taken out of flight) meanwhile
            };
            if self.budget_short_for_copy(now) {
                continue; // a copy is never worth a RATE_LIMITED
            }
            self.push_transmit(Frame::Chat(chat), FLAG_RETRANSMIT, false);
        }
    }

    /// The connection has datagrams (QUIC) or is a reliable stream only (TLS over
    /// TCP): sends go in datagrams and are retransmitted by the engine only with
    /// datagrams and when `uplink` asks for them.
    pub fn set_datagrams(&mut self, datagrams: bool, uplink_datagrams: bool) {
        let on = datagrams && uplink_datagrams;
        self.config.datagram_sends = on;
        self.qos.set_retransmit(on);
    }

    fn push_transmit(&mut self, frame: Frame, flags: u8, reliable: bool) {
        let now = self.now;
        // ACKs are outside the send budget (the server guards them separately).
        if !matches!(frame, Frame::DeliveryAck(_)) {
            if let Some(b) = &mut self.budget {
                b.charge(now);
            }
        }
        self.transmits.push_back(Transmit {
            frame,
            flags,
            reliable,
        });
    }

    /// Own messages a rewind put back in the outbox: Pending again to the app, and
    /// whatever was in flight is sent again under its new number.
    fn requeued(&mut self, r: crate::store::Rewound) {
        self.cancel_from(0);
        self.publish(Applied {
            status_changes: r
                .requeued
                .into_iter()
                .map(|id| (id, crate::types::MessageStatus::Pending))
                .collect(),
            ..Applied::default()
        });
    }

    fn publish(&mut self, applied: Applied) {
        let empty = applied.new_messages.is_empty()
            && applied.status_changes.is_empty()
            && applied.updated.is_empty()
            && applied.conversations.is_empty();
        if !empty {
            self.events.push_back(SyncEvent::Applied(applied));
        }
    }

    /// Logged in with the server's head `head`: summaries first (so a large backlog
    /// shows at once), then the timeline above the cursor page by page, the read marks
    /// not yet confirmed, the large groups' logs, everything unacknowledged in the
    /// original order, then the rest of the outbox.
    ///
    /// The send budget starts full, like the server's bucket; the outbox is renumbered
    /// first if the server's next send seq cannot be filled by it (see
    /// [`Db::renumber_sends`]).
    pub fn on_connected(
        &mut self,
        login: LoginInfo,
        now: Instant,
        db: &mut Db,
    ) -> Result<(), DbError> {
        let head = login.head;
        self.now = self.now.max(now);
        self.link = Some(Link {
            head,
            ..Link::default()
        });
        self.paused_until = None;
        self.paced_at = None;
        self.budget = (login.send_rate_per_sec > 0 && login.send_burst > 0)
            .then(|| TokenBucket::new(login.send_rate_per_sec, login.send_burst, now));
        let burst = login.send_burst as f64;
        self.reserve = (burst / 10.0).max(2.0).min((burst - 1.0).max(0.0));
        self.generation = login.store_generation;
        // The server's store went back in time (restored from a backup): rewind the
        // timeline to the restore point, own messages above it go out again.
        let rewound = db.server_generation(login.store_generation, login.restored_seq, head)?;
        if let Some(r) = rewound {
            self.requeued(r);
            // The seqs above the restore point are given to new entries: pushes of
            // them are not the duplicates the filter remembers.
            self.filter = DuplicateFilter::new(DedupConfig::default());
            if login.next_send_seq > 0 {
                db.renumber_sends(login.next_send_seq)?;
            }
        }
        if login.next_send_seq > 0 {
            let lowest = db
                .outbox_sends(1)?
                .first()
                .map(|(_, s)| *s)
                .filter(|s| *s > 0);
            // Nothing queued, or only numbers above a gap nothing can fill: continue
            // from the server's next. (Numbers below it may be messages stored whose
            // answer was lost: sent as they are, they come back as duplicates.)
            if lowest.is_none_or(|s| s > login.next_send_seq) {
                let n = db.renumber_sends(login.next_send_seq)?;
                if n > 0 {
                    self.cancel_from(0);
                }
            }
        }
        let cursor = db.cursor()?;
        if head > cursor {
            let start_at_head = cursor == 0 && !self.config.full_history_sync;
            self.link_mut().start_at_head = start_at_head;
            let request_id = self.next_request_id();
            self.send(Frame::SummariesRequest(pb::SummariesRequest {
                request_id,
                last_messages: 5,
                limit: 100,
            }));
        }
        if !self.link_mut().start_at_head {
            self.pull(db)?;
        }
        self.send_reads(db)?;
        let request_id = self.next_request_id();
        self.send(Frame::LogsRequest(pb::LogsRequest { request_id }));
        self.resend_in_flight(now);
        self.flush(now, db)
    }

    /// A new connection: the sends the last one left unanswered go again, in send order,
    /// as far as the send budget pays for them now. The rest are taken out of flight, so
    /// the outbox sends them again, paced and in order. (Skipped as copies, they waited
    /// for the engine's timer, and on the stream uplink, whose engine does not
    /// retransmit, that never came: after a reconnect with more in flight than the
    /// budget, those sends failed after two minutes and every later one with them, held
    /// by the server behind the gap. `sync_sim`'s ordering property found it.)
    fn resend_in_flight(&mut self, now: Instant) {
        let mut resend: Vec<(u64, ClientMsgId, pb::ChatMessage)> = self
            .qos
            .on_reconnect(now)
            .into_iter()
            .filter_map(|id| {
                let chat = self.qos.payload(&id)?.clone();
                Some((chat.send_seq, id, chat))
            })
            .collect();
        resend.sort_by_key(|(seq, ..)| *seq);
        let mut short = false;
        for (_, id, chat) in resend {
            short = short || self.budget_short_for_copy(now);
            if short {
                self.qos.cancel(&id);
            } else {
                self.send_chat(chat, FLAG_RETRANSMIT);
            }
        }
    }

    /// The connection ended: what was in flight on it is forgotten (sends stay tracked
    /// and go again on the next connection).
    pub fn on_disconnected(&mut self) {
        self.link = None;
        self.transmits.clear();
    }

    fn link_mut(&mut self) -> &mut Link {
        self.link.get_or_insert_with(Link::default)
    }

    /// Sends every read mark the server has not confirmed (call when the app marked a
    /// conversation read).
    pub fn send_reads(&mut self, db: &mut Db) -> Result<(), DbError> {
        if self.link.is_none() {
            return Ok(());
        }
        for (kind, conversation, up_to) in db.pending_reads()? {
            let in_flight = self
                .link_mut()
                .reads
                .values()
                .any(|(k, c, u)| *k == kind && *c == conversation && *u >= up_to);
            if in_flight {
                continue;
            }
            let request_id = self.next_request_id();
            self.link_mut()
                .reads
                .insert(request_id, (kind, conversation.clone(), up_to));
            self.send(Frame::MarkRead(pb::MarkRead {
                request_id,
                kind: kind.to_wire(),
                conversation,
                up_to_seq: up_to,
            }));
        }
        Ok(())
    }

    /// Timers due at `now`: retransmissions and give-ups, deferred sends, the gap wait.
    pub fn handle_timeout(&mut self, now: Instant, db: &mut Db) -> Result<(), DbError> {
        self.now = self.now.max(now);
        if self.link.is_none() {
            return Ok(());
        }
        self.send_copies(now);
        self.qos.handle_timeout(now);
        let mut freed = false;
        while let Some(ev) = self.qos.poll_event() {
            match ev {
                SenderEvent::Retransmit(id) => {
                    if let Some(chat) = self.qos.payload(&id).cloned() {
                        self.send_chat(chat, FLAG_RETRANSMIT);
                    }
                }
                SenderEvent::Failed {
                    key,
                    transmissions,
                    elapsed,
                } => {
                    freed = true;
                    let reason = format!(
                        "not acknowledged after {transmissions} attempts in {}s",
                        elapsed.as_secs()
                    );
                    tracing::warn!(id = %key, %reason, "send failed");
                    self.fail(&key, reason, db)?;
                }
            }
        }
        let resume = self.paused_until.is_some_and(|t| t <= now);
        if resume {
            self.paused_until = None;
        }
        let paced = self.paced_at.is_some_and(|t| t <= now);
        if paced {
            self.paced_at = None;
        }
        if freed || resume || paced {
            self.flush(now, db)?;
        }
        let gap_due = self
            .link
            .as_ref()
            .and_then(|l| l.gap_at)
            .is_some_and(|at| at <= now);
        if gap_due {
            self.link_mut().gap_at = None;
            self.pull_gap(db)?;
        }
        let pull_due = self
            .link
            .as_ref()
            .and_then(|l| l.pull_at)
            .is_some_and(|at| at <= now);
        if pull_due {
            self.link_mut().pull_at = None;
            self.pull(db)?;
        }
        Ok(())
    }

    /// Sends a `DeliveryAck`: the cursor, and the seqs above it (sorted, once each).
    fn ack_above(&mut self, cursor: u64, seqs: impl IntoIterator<Item = u64>, reliable: bool) {
        let mut seqs: Vec<u64> = seqs.into_iter().filter(|s| *s > cursor).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let ack = Frame::DeliveryAck(pb::DeliveryAck {
            cumulative_seq: cursor,
            seqs,
            ..Default::default()
        });
        self.push_transmit(ack, 0, reliable);
    }

    /// Stores entries, then acknowledges them in one `DeliveryAck` (never before the
    /// commit; `reliable` for a page, see [`Transmit::reliable`]), together with the
    /// seqs in `again` (pushes seen before whose ACK was lost), and opens or closes the
    /// gap timer.
    fn store_and_ack(
        &mut self,
        entries: &[pb::TimelineEntry],
        again: &[u64],
        reliable: bool,
        now: Instant,
        db: &mut Db,
    ) -> Result<(), DbError> {
        let applied = db.apply_entries(entries)?;
        self.publish(applied);
        let cursor = db.cursor()?;
        let max_seen = db.max_seq()?;
        let seqs = entries.iter().map(|e| e.seq).chain(again.iter().copied());
        self.ack_above(cursor, seqs, reliable);
        let gap_wait = self.config.gap_wait;
        let link = self.link_mut();
        if max_seen > cursor {
            if link.gap_at.is_none() && link.pages.is_empty() {
                link.gap_at = Some(now + gap_wait);
            }
        } else {
            link.gap_at = None;
        }
        Ok(())
    }

    /// Feeds a frame from the server. Frames that are not the machine's business (or
    /// answer a request the app made: `OpResult`, `GroupResponse`, `HistoryResponse`,
    /// an `Error` naming a request, `HeartbeatReply`, `Kickout`) are handed back.
    pub fn handle_frame(
        &mut self,
        frame: Frame,
        now: Instant,
        db: &mut Db,
    ) -> Result<Option<Frame>, DbError> {
        self.now = self.now.max(now);
        let Some(link) = self.link.as_mut() else {
            return Ok(Some(frame));
        };
        link.waiting_since = None;
        match frame {
            Frame::SendResult(r) => self.on_send_result(r, now, db)?,
            Frame::Push(p) if !p.log.is_empty() => {
                if let Some(entry) = p.entry {
                    self.on_log_push(p.log, entry, db)?;
                }
            }
            Frame::SyncResponse(page) if !page.log.is_empty() => self.on_log_page(page, db)?,
            Frame::Logs(logs) => self.on_logs(logs, db)?,
            Frame::Push(p) => {
                if let Some(entry) = p.entry {
                    self.on_pushes(vec![entry], now, db)?;
                }
            }
            Frame::SyncResponse(page) => self.on_page(page, now, db)?,
            Frame::Summaries(s) => self.on_summaries(s, db)?,
            Frame::HeartbeatReply(r) => {
                // The server's head (a cluster node says it): an entry whose live push
                // was lost between nodes is pulled now, not at the next push.
                if r.inbox_head_seq > self.head() {
                    self.link_mut().head = r.inbox_head_seq;
                    self.pull(db)?;
                }
                return Ok(Some(Frame::HeartbeatReply(r)));
            }
            Frame::OpResult(r) => {
                let Some((kind, conversation, up_to)) = self.link_mut().reads.remove(&r.request_id)
                else {
                    return Ok(Some(Frame::OpResult(r)));
                };
                let code = ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Internal);
                // Done, or refused for good: forget it. Busy/unavailable: it stays
                // queued and goes again on the next connection.
                if !matches!(code, ErrorCode::ServerBusy | ErrorCode::StoreUnavailable) {
                    if code != ErrorCode::Ok {
                        tracing::warn!(%conversation, code = code.as_str_name(), "read mark refused");
                    }
                    db.drop_pending_read(kind, &conversation, up_to)?;
                }
            }
            Frame::Error(e) => {
                self.on_page_error(e.request_id, now);
                self.link_mut()
                    .log_syncing
                    .retain(|_, id| *id != e.request_id);
                return Ok(Some(Frame::Error(e)));
            }
            other => return Ok(Some(other)),
        }
        Ok(None)
    }

    fn on_summaries(&mut self, s: pb::Summaries, db: &mut Db) -> Result<(), DbError> {
        let link = self.link_mut();
        link.head = link.head.max(s.head_seq);
        let applied = db.apply_summaries(&s.conversations, s.head_seq, unix_ms())?;
        self.publish(applied);
        if std::mem::take(&mut self.link_mut().start_at_head) {
            let applied = db.start_at(s.head_seq)?;
            tracing::info!(
                head = s.head_seq,
                "fresh install: history stays on the server until paged"
            );
            self.publish(applied);
            self.pull(db)?;
        }
        Ok(())
    }
}
