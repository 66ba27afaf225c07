//! The connection manager: one task per logged-in client.
//!
//! ```text
//!   ┌──────────── connect + Login ◄──────────────────────────────┐
//!   │ ok                          refused for good → LoginFailed   │ backoff (full jitter),
//!   ▼                                                              │ at once after network_changed
//!  session: summaries → sync pages → resend outbox → live ──lost──┘
//!           kickout → KickedOut (stop) · logout → Disconnected (stop)
//! ```
//!
//! During a session the task drives the protocol crate's sans-IO machines: the send
//! [`Sender`] (retransmission of unacknowledged chats), the [`SmartHeartbeat`], the
//! [`DuplicateFilter`] for pushes, and the [`Backoff`] between sessions. Local writes
//! happen before anything is acknowledged to the server (store, then `DeliveryAck`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_protocol::backoff::Backoff;
use tern_protocol::dedup::{DedupConfig, DuplicateFilter};
use tern_protocol::frame::{DEFAULT_MAX_FRAME_BODY, FLAG_RETRANSMIT, Frame};
use tern_protocol::heartbeat::{HeartbeatAction, SmartHeartbeat};
use tern_protocol::io::{Inbound, read_frame, send_as_datagram, spawn_session_readers};
use tern_protocol::qos::{Sender, SenderEvent};
use tern_protocol::{ClientMsgId, ErrorCode, pb};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use crate::Inner;
use crate::store::Applied;
use crate::types::{ClientEvent, ConnectionState, MessageStatus};
use tern_protocol::unix_ms;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause before resending a message the server deferred (rate limited, busy).
const SERVER_DEFERRAL: Duration = Duration::from_secs(1);

/// What the API asks the connection task to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// New messages are in the outbox.
    Flush,
    /// The app reported a different network.
    NetworkChanged(String),
    /// Foreground (true) or background.
    SetForeground(bool),
    /// End the session on purpose.
    Logout,
    /// Stop everything.
    Shutdown,
    /// A request that needs the server's answer (group operations, history, recall,
    /// push token). Answered at once with an error when not connected.
    Call(Call),
    /// Read marks were queued in the store.
    SendReads,
}

/// A request and where its answer goes.
#[derive(Debug)]
pub(crate) struct Call {
    /// The request; its request id is assigned by the session.
    pub frame: Frame,
    /// The answer frame (`OpResult`, `GroupResponse`, `HistoryResponse`), or why none.
    pub reply: std::sync::mpsc::SyncSender<Result<Frame, String>>,
}

/// Sets the request id of a request frame (false: not a request).
fn set_request_id(frame: &mut Frame, id: u64) -> bool {
    match frame {
        Frame::GroupRequest(r) => r.request_id = id,
        Frame::HistoryRequest(r) => r.request_id = id,
        Frame::RecallRequest(r) => r.request_id = id,
        Frame::PushTokenRequest(r) => r.request_id = id,
        Frame::MarkRead(r) => r.request_id = id,
        _ => return false,
    }
    true
}

/// Why a session ended.
enum End {
    Lost(String),
    NetworkChanged,
    Kicked(pb::KickReason, String),
    LoggedOut,
    Shutdown,
}

enum ConnectError {
    Refused(ErrorCode, String),
    Failed(String),
}

fn endpoint(inner: &Inner) -> Result<quinn::Endpoint, String> {
    let cfg = &inner.config;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_pem {
        Some(pem) => {
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| format!("bad CA PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("CA PEM holds no certificate".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut client = tern_protocol::io::client_config(roots)?;
    let mut transport = quinn::TransportConfig::default();
    // Liveness is the smart heartbeat's job; QUIC must outlast its longest interval.
    let idle = cfg.heartbeat.background.max + Duration::from_secs(120);
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).map_err(|e| e.to_string())?,
    ));
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    client.transport_config(Arc::new(transport));
    let bind: std::net::SocketAddr = "[::]:0".parse().expect("valid");
    let mut endpoint = quinn::Endpoint::client(bind)
        .or_else(|_| quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid")))
        .map_err(|e| format!("cannot bind a UDP socket: {e}"))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

fn server_name(server: &str) -> String {
    let host = server
        .rsplit_once(':')
        .map_or(server, |(h, _)| h)
        .trim_matches(['[', ']']);
    if host.parse::<std::net::IpAddr>().is_ok() {
        "localhost".into()
    } else {
        host.into()
    }
}

async fn connect(
    inner: &Inner,
    endpoint: &quinn::Endpoint,
    user: &str,
    token: &str,
) -> Result<
    (
        quinn::Connection,
        quinn::SendStream,
        quinn::RecvStream,
        BytesMut,
        pb::LoginResult,
    ),
    ConnectError,
> {
    let cfg = &inner.config;
    let fail = |e: String| ConnectError::Failed(e);
    let addr = tokio::net::lookup_host(&cfg.server)
        .await
        .map_err(|e| fail(format!("resolve {}: {e}", cfg.server)))?
        .next()
        .ok_or_else(|| fail(format!("{} resolves to nothing", cfg.server)))?;
    let name = cfg
        .server_name
        .clone()
        .unwrap_or_else(|| server_name(&cfg.server));
    let connecting = endpoint
        .connect(addr, &name)
        .map_err(|e| fail(e.to_string()))?;
    let conn = timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| fail("connect timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| fail(e.to_string()))?;
    let cursor = inner
        .with_db(|db| db.cursor())
        .map_err(|e| fail(e.to_string()))?;
    let login = Frame::Login(pb::Login {
        user_id: user.into(),
        token: token.into(),
        device_id: cfg.device_id.clone(),
        platform: cfg.platform as i32,
        client_version: cfg.client_version.clone(),
        inbox_cursor: cursor,
    });
    send.write_all(&login.to_bytes(0))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(4096);
    match timeout(
        CONNECT_TIMEOUT,
        read_frame(&mut recv, &mut buf, DEFAULT_MAX_FRAME_BODY),
    )
    .await
    {
        Ok(Ok(Some((_, Frame::LoginResult(r))))) => {
            let code = ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Internal);
            if code != ErrorCode::Ok {
                return Err(ConnectError::Refused(code, r.message));
            }
            Ok((conn, send, recv, buf, r))
        }
        Ok(Ok(Some((_, Frame::Error(e))))) => Err(ConnectError::Refused(
            ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
            e.message,
        )),
        Ok(Ok(other)) => Err(fail(format!("unexpected answer to login: {other:?}"))),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail("login timed out".into())),
    }
}

/// Codes after which retrying the same login cannot succeed.
fn fatal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadToken
            | ErrorCode::TokenExpired
            | ErrorCode::Banned
            | ErrorCode::UpgradeRequired
            | ErrorCode::InvalidArgument
            | ErrorCode::UnsupportedVersion
    )
}

/// Send results after which resending the same message cannot succeed.
fn permanent(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::MessageTooLarge
            | ErrorCode::NotAllowed
            | ErrorCode::GroupNotFound
            | ErrorCode::RecipientNotFound
            | ErrorCode::InvalidArgument
    )
}

/// The connection task of one logged-in client.
pub(crate) async fn run(
    inner: Arc<Inner>,
    user: String,
    token: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let cfg = inner.config.clone();
    let now = Instant::now().into_std();
    let mut state = Machines {
        qos: Sender::new(cfg.qos.clone(), now),
        heartbeat: SmartHeartbeat::new(cfg.heartbeat.clone(), &cfg.network_label, now),
        filter: DuplicateFilter::new(DedupConfig::default()),
        backoff: Backoff::new(cfg.backoff.clone(), rand::random()),
        pending: HashMap::new(),
        heartbeats_sent: 0,
        deferred: HashMap::new(),
    };
    let endpoint = match endpoint(&inner) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the QUIC endpoint");
            inner.set_state(ConnectionState::LoginFailed {
                code: "TLS_CONFIG".into(),
                message: e,
            });
            return;
        }
    };
    loop {
        inner.set_state(ConnectionState::Connecting);
        let mut immediate = false;
        let end = match connect(&inner, &endpoint, &user, &token).await {
            Ok((conn, send, recv, buf, result)) => {
                inner.max_body.store(
                    result.max_body_bytes.max(1),
                    std::sync::atomic::Ordering::Relaxed,
                );
                state.backoff.on_connected(Instant::now().into_std());
                inner.set_state(ConnectionState::Connected);
                tracing::info!(%user, session = %result.session_id, head = result.inbox_head_seq, "logged in");
                let mut session =
                    Session::new(&inner, &endpoint, conn, send, result.inbox_head_seq);
                let end = session.run(recv, buf, &mut state, &mut commands).await;
                session.conn.close(0u32.into(), b"bye");
                state.backoff.on_disconnected(Instant::now().into_std());
                end
            }
            Err(ConnectError::Refused(code, message)) if fatal(code) => {
                tracing::warn!(%user, code = code.as_str_name(), %message, "login refused");
                inner.set_state(ConnectionState::LoginFailed {
                    code: code.as_str_name().into(),
                    message,
                });
                return;
            }
            Err(ConnectError::Refused(code, message)) => {
                End::Lost(format!("{}: {message}", code.as_str_name()))
            }
            Err(ConnectError::Failed(e)) => End::Lost(e),
        };
        match end {
            End::Lost(why) => tracing::info!(%user, %why, "connection lost"),
            End::NetworkChanged => immediate = true,
            End::Kicked(pb::KickReason::ServerShutdown, text) => {
                tracing::info!(%user, %text, "server going away")
            }
            End::Kicked(reason, text) => {
                tracing::warn!(%user, reason = reason.as_str_name(), %text, "kicked out");
                inner.set_state(ConnectionState::KickedOut {
                    reason: reason.as_str_name().into(),
                    text,
                });
                return;
            }
            End::LoggedOut => {
                inner.set_state(ConnectionState::Disconnected);
                return;
            }
            End::Shutdown => return,
        }
        let delay = if immediate {
            state.backoff.network_changed()
        } else {
            state.backoff.next_delay()
        };
        inner.set_state(ConnectionState::WaitingToReconnect {
            delay_ms: delay.as_millis() as u64,
        });
        let wake = sleep_until(Instant::now() + delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => return,
                    Some(Command::Logout) => {
                        inner.set_state(ConnectionState::Disconnected);
                        return;
                    }
                    Some(Command::NetworkChanged(label)) => {
                        state.heartbeat.network_changed(&label);
                        state.backoff.network_changed();
                        break;
                    }
                    Some(Command::SetForeground(f)) => state.heartbeat.set_foreground(f),
                    Some(Command::Call(call)) => {
                        let _ = call.reply.try_send(Err("not connected".into()));
                    }
                    Some(Command::Flush) | Some(Command::SendReads) => {}
                },
            }
        }
    }
}

/// The sans-IO state that lives across connections.
struct Machines {
    qos: Sender<ClientMsgId>,
    heartbeat: SmartHeartbeat,
    filter: DuplicateFilter<u64>,
    backoff: Backoff,
    /// Chat frames of unacknowledged sends, for retransmission.
    pending: HashMap<ClientMsgId, pb::ChatMessage>,
    /// Heartbeats sent (diagnostics).
    heartbeats_sent: u64,
    /// Sends the server deferred (rate limited, busy): not before this time.
    deferred: HashMap<ClientMsgId, Instant>,
}

struct Session<'a> {
    inner: &'a Arc<Inner>,
    endpoint: &'a quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    head: u64,
    next_request: u64,
    /// The sync in progress: (request id, until seq).
    syncing: Option<(u64, u64)>,
    /// When an open gap will be pulled.
    gap_at: Option<Instant>,
    /// Requests waiting for their answer, by request id. Dropped with the session,
    /// which tells each caller the connection was lost.
    calls: HashMap<u64, std::sync::mpsc::SyncSender<Result<Frame, String>>>,
    /// Read marks sent, by request id.
    reads: HashMap<u64, (crate::ConversationKind, String, u64)>,
    /// A fresh install that does not download old history: jump to the head once the
    /// summaries are in.
    start_at_head: bool,
    /// Large groups' logs being synced: group -> request id.
    log_syncing: HashMap<String, u64>,
}

impl<'a> Session<'a> {
    fn new(
        inner: &'a Arc<Inner>,
        endpoint: &'a quinn::Endpoint,
        conn: quinn::Connection,
        send: quinn::SendStream,
        head: u64,
    ) -> Self {
        Session {
            inner,
            endpoint,
            conn,
            send,
            head,
            next_request: 1,
            syncing: None,
            gap_at: None,
            calls: HashMap::new(),
            reads: HashMap::new(),
            start_at_head: false,
            log_syncing: HashMap::new(),
        }
    }

    async fn write(&mut self, frame: &Frame, flags: u8, m: &mut Machines) -> Result<(), End> {
        if !matches!(frame, Frame::Heartbeat(_)) {
            m.heartbeat.on_sent(Instant::now().into_std());
        }
        let bytes = frame.to_bytes(flags);
        if send_as_datagram(&self.conn, frame, &bytes) {
            return Ok(());
        }
        match timeout(WRITE_TIMEOUT, self.send.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Lost(format!("write failed: {e}"))),
            Err(_) => Err(End::Lost("write timed out".into())),
        }
    }

    fn request_id(&mut self) -> u64 {
        self.next_request += 1;
        self.next_request
    }

    async fn run(
        &mut self,
        recv: quinn::RecvStream,
        buf: BytesMut,
        m: &mut Machines,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> End {
        let (tx, mut inbound) = mpsc::channel(256);
        spawn_session_readers(self.conn.clone(), recv, buf, DEFAULT_MAX_FRAME_BODY, tx);
        match self.start(m).await {
            Ok(()) => {}
            Err(end) => return end,
        }
        loop {
            let qos_at = m.qos.poll_timeout().map(Instant::from_std);
            let retry_at = m.deferred.values().min().copied();
            let hb_at = Instant::from_std(m.heartbeat.poll_timeout());
            let far = Instant::now() + Duration::from_secs(3600);
            let step = tokio::select! {
                cmd = commands.recv() => self.on_command(cmd, m).await,
                frame = inbound.recv() => match frame {
                    Some(Inbound::Frame(f)) => self.on_frame(*f, m).await,
                                        Some(Inbound::Closed(why)) => Err(End::Lost(why)),
                    Some(Inbound::Invalid(e)) => Err(End::Lost(format!("bad frame from server: {e}"))),
                    None => Err(End::Lost("reader stopped".into())),
                },
                _ = sleep_until(qos_at.unwrap_or(far)), if qos_at.is_some() => self.on_qos_timer(m).await,
                                _ = sleep_until(hb_at) => self.on_heartbeat_timer(m).await,
                _ = sleep_until(retry_at.unwrap_or(far)), if retry_at.is_some() => self.flush(m).await,
                                _ = sleep_until(self.gap_at.unwrap_or(far)), if self.gap_at.is_some() => {
                    self.gap_at = None;
                    self.pull_gap(m).await
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// After login: summaries first (so a large backlog shows at once), then the
    /// timeline above the cursor page by page, then everything unacknowledged.
    async fn start(&mut self, m: &mut Machines) -> Result<(), End> {
        let now = Instant::now().into_std();
        m.heartbeat.on_connected(now);
        let cursor = self
            .inner
            .with_db(|db| db.cursor())
            .map_err(|e| End::Lost(e.to_string()))?;
        if self.head > cursor {
            self.start_at_head = cursor == 0 && !self.inner.config.full_history_sync;
            let id = self.request_id();
            self.write(
                &Frame::SummariesRequest(pb::SummariesRequest {
                    request_id: id,
                    last_messages: 5,
                    limit: 100,
                }),
                0,
                m,
            )
            .await?;
        }
        if !self.start_at_head {
            self.pull(m).await?;
        }
        self.send_reads(m).await?;
        // The large groups' logs: heads, unread counts, last messages; then each log
        // is pulled above its cursor.
        let id = self.request_id();
        self.write(
            &Frame::LogsRequest(pb::LogsRequest { request_id: id }),
            0,
            m,
        )
        .await?;
        for id in m.qos.on_reconnect(now) {
            if let Some(chat) = m.pending.get(&id).cloned() {
                self.write(&Frame::Chat(chat), FLAG_RETRANSMIT, m).await?;
            }
        }
        self.flush(m).await
    }

    /// Requests the next sync page above the cursor (if none is in flight).
    async fn pull(&mut self, m: &mut Machines) -> Result<(), End> {
        if self.syncing.is_some() {
            return Ok(());
        }
        let cursor = self
            .inner
            .with_db(|db| db.cursor())
            .map_err(|e| End::Lost(e.to_string()))?;
        let max_seen = self
            .inner
            .with_db(|db| db.max_seq())
            .map_err(|e| End::Lost(e.to_string()))?;
        if cursor >= self.head.max(max_seen) {
            return Ok(());
        }
        let id = self.request_id();
        self.syncing = Some((id, 0));
        let limit = self.inner.config.sync_page;
        self.write(
            &Frame::SyncRequest(pb::SyncRequest {
                request_id: id,
                after_seq: cursor,
                until_seq: 0,
                limit,
                ..Default::default()
            }),
            0,
            m,
        )
        .await
    }

    /// Requests exactly the first missing range: above the cursor, below the first entry
    /// already held. (Asking for everything above the cursor would re-send, on every
    /// lost push, entries the device already has.)
    async fn pull_gap(&mut self, m: &mut Machines) -> Result<(), End> {
        if self.syncing.is_some() {
            return Ok(());
        }
        let (cursor, held) = self
            .inner
            .with_db(|db| Ok((db.cursor()?, db.first_held_seq()?)))
            .map_err(|e| End::Lost(e.to_string()))?;
        let Some(held) = held else { return Ok(()) };
        let id = self.request_id();
        let until = held - 1;
        self.syncing = Some((id, until));
        let limit = self.inner.config.sync_page;
        self.write(
            &Frame::SyncRequest(pb::SyncRequest {
                request_id: id,
                after_seq: cursor,
                until_seq: until,
                limit,
                ..Default::default()
            }),
            0,
            m,
        )
        .await
    }

    /// Sends outbox messages that are not in flight yet, in order, while the window allows.
    async fn flush(&mut self, m: &mut Machines) -> Result<(), End> {
        if !m.qos.has_room() {
            return Ok(());
        }
        let limit = (m.qos.in_flight() + m.qos.config().window) as u32;
        let outbox = self
            .inner
            .with_db(|db| db.outbox(limit))
            .map_err(|e| End::Lost(e.to_string()))?;
        let now = Instant::now();
        m.deferred.retain(|_, at| *at > now);
        for msg in outbox {
            let Ok(id) = ClientMsgId::from_hex(&msg.client_msg_id).ok_or(()) else {
                continue;
            };
            if m.qos.is_pending(&id) || m.deferred.contains_key(&id) {
                continue;
            }
            if m.qos.try_send(id, Instant::now().into_std()).is_err() {
                break;
            }
            let chat = pb::ChatMessage {
                client_msg_id: bytes::Bytes::copy_from_slice(&id.0),
                sender: String::new(),
                recipient: msg.recipient.clone(),
                kind: msg.kind.to_wire(),
                content_type: msg.content_type,
                body: msg.body.clone().into(),
                client_ts_ms: msg.client_ts_ms,
            };
            m.pending.insert(id, chat.clone());
            self.write(&Frame::Chat(chat), 0, m).await?;
        }
        Ok(())
    }

    /// Stores a pushed entry of a large group's log, acknowledges it, and pulls the log
    /// if it reveals a gap.
    async fn on_log_push(
        &mut self,
        group: String,
        entry: pb::TimelineEntry,
        m: &mut Machines,
    ) -> Result<(), End> {
        let seq = entry.seq;
        let follows = self
            .inner
            .with_db(|db| db.follows_log(&group))
            .map_err(|e| End::Lost(e.to_string()))?;
        if !follows {
            // Not (yet) a member as far as this device knows: the group event in the
            // user's timeline (with the position to start from) comes next. Settle the
            // push, store nothing.
            return self
                .write(
                    &Frame::DeliveryAck(pb::DeliveryAck {
                        cumulative_seq: 0,
                        seqs: vec![seq],
                        log: group,
                    }),
                    0,
                    m,
                )
                .await;
        }
        let applied = self
            .inner
            .with_db(|db| db.apply_log_entries(&group, &[entry]))
            .map_err(|e| End::Lost(e.to_string()))?;
        self.publish(applied);
        let (cursor, max) = self
            .inner
            .with_db(|db| Ok((db.log_cursor(&group)?, db.log_max_seq(&group)?)))
            .map_err(|e| End::Lost(e.to_string()))?;
        self.write(
            &Frame::DeliveryAck(pb::DeliveryAck {
                cumulative_seq: cursor,
                seqs: if seq > cursor { vec![seq] } else { vec![] },
                log: group.clone(),
            }),
            0,
            m,
        )
        .await?;
        if max > cursor {
            self.pull_log(&group, m).await?;
        }
        Ok(())
    }

    /// Requests the next page of a large group's log above its cursor.
    async fn pull_log(&mut self, group: &str, m: &mut Machines) -> Result<(), End> {
        if self.log_syncing.contains_key(group) {
            return Ok(());
        }
        let cursor = self
            .inner
            .with_db(|db| db.log_cursor(group))
            .map_err(|e| End::Lost(e.to_string()))?;
        let id = self.request_id();
        self.log_syncing.insert(group.to_owned(), id);
        self.write(
            &Frame::SyncRequest(pb::SyncRequest {
                request_id: id,
                after_seq: cursor,
                until_seq: 0,
                limit: self.inner.config.sync_page,
                log: group.to_owned(),
            }),
            0,
            m,
        )
        .await
    }

    async fn on_log_page(&mut self, page: pb::SyncResponse, m: &mut Machines) -> Result<(), End> {
        let group = page.log.clone();
        self.log_syncing.remove(&group);
        let before = self
            .inner
            .with_db(|db| db.log_cursor(&group))
            .map_err(|e| End::Lost(e.to_string()))?;
        let applied = self
            .inner
            .with_db(|db| db.apply_log_entries(&group, &page.entries))
            .map_err(|e| End::Lost(e.to_string()))?;
        self.publish(applied);
        let cursor = self
            .inner
            .with_db(|db| db.log_cursor(&group))
            .map_err(|e| End::Lost(e.to_string()))?;
        self.write(
            &Frame::DeliveryAck(pb::DeliveryAck {
                cumulative_seq: cursor,
                seqs: vec![],
                log: group.clone(),
            }),
            0,
            m,
        )
        .await?;
        if cursor > before && (page.more || page.head_seq > cursor) {
            self.pull_log(&group, m).await?;
        }
        Ok(())
    }

    /// The large groups' summaries: applied, then each log is caught up (or, on a fresh
    /// install without full history, started at its head).
    async fn on_logs(&mut self, logs: pb::Logs, m: &mut Machines) -> Result<(), End> {
        let applied = self
            .inner
            .with_db(|db| db.apply_log_summaries(&logs.groups, unix_ms()))
            .map_err(|e| End::Lost(e.to_string()))?;
        self.publish(applied);
        for s in &logs.groups {
            let cursor = self
                .inner
                .with_db(|db| db.log_cursor(&s.log))
                .map_err(|e| End::Lost(e.to_string()))?;
            if cursor == 0 {
                // First sight of this log on this device: from where the user joined
                // (what write diffusion would have given them), or, without full
                // history, from the head (older messages come as history pages).
                let start = if self.inner.config.full_history_sync {
                    s.joined_at
                } else {
                    s.latest_seq
                };
                let applied = self
                    .inner
                    .with_db(|db| db.start_log_at(&s.log, start))
                    .map_err(|e| End::Lost(e.to_string()))?;
                self.publish(applied);
                if s.latest_seq > start {
                    self.pull_log(&s.log, m).await?;
                }
            } else if s.latest_seq > cursor {
                self.pull_log(&s.log, m).await?;
            }
        }
        Ok(())
    }

    /// Sends every read mark the server has not confirmed.
    async fn send_reads(&mut self, m: &mut Machines) -> Result<(), End> {
        let pending = self
            .inner
            .with_db(|db| db.pending_reads())
            .map_err(|e| End::Lost(e.to_string()))?;
        for (kind, conversation, up_to) in pending {
            if self
                .reads
                .values()
                .any(|(k, c, u)| *k == kind && *c == conversation && *u >= up_to)
            {
                continue;
            }
            let id = self.request_id();
            self.reads.insert(id, (kind, conversation.clone(), up_to));
            self.write(
                &Frame::MarkRead(pb::MarkRead {
                    request_id: id,
                    kind: kind.to_wire(),
                    conversation,
                    up_to_seq: up_to,
                }),
                0,
                m,
            )
            .await?;
        }
        Ok(())
    }

    async fn on_command(&mut self, cmd: Option<Command>, m: &mut Machines) -> Result<(), End> {
        match cmd {
            Some(Command::Flush) => self.flush(m).await,
            Some(Command::SendReads) => self.send_reads(m).await,
            Some(Command::Call(mut call)) => {
                let id = self.request_id();
                if !set_request_id(&mut call.frame, id) {
                    let _ = call.reply.try_send(Err("not a request frame".into()));
                    return Ok(());
                }
                self.calls.insert(id, call.reply);
                self.write(&call.frame, 0, m).await
            }
            Some(Command::SetForeground(f)) => {
                m.heartbeat.set_foreground(f);
                Ok(())
            }
            Some(Command::NetworkChanged(label)) => {
                m.heartbeat.network_changed(&label);
                // Migrate: a fresh socket on the new network; QUIC moves the
                // connection over. If that fails, reconnect at once.
                let socket = std::net::UdpSocket::bind("[::]:0")
                    .or_else(|_| std::net::UdpSocket::bind("0.0.0.0:0"));
                match socket.map(|s| self.endpoint.rebind(s)) {
                    Ok(Ok(())) => {
                        tracing::info!(%label, "network changed: migrated to a new socket");
                        Ok(())
                    }
                    _ => Err(End::NetworkChanged),
                }
            }
            Some(Command::Logout) => {
                let _ = self.write(&Frame::Logout(pb::Logout {}), 0, m).await;
                let _ = self.send.finish();
                let _ = timeout(Duration::from_millis(500), self.conn.closed()).await;
                Err(End::LoggedOut)
            }
            Some(Command::Shutdown) | None => Err(End::Shutdown),
        }
    }

    async fn on_qos_timer(&mut self, m: &mut Machines) -> Result<(), End> {
        m.qos.handle_timeout(Instant::now().into_std());
        let mut freed = false;
        while let Some(ev) = m.qos.poll_event() {
            match ev {
                SenderEvent::Retransmit(id) => {
                    if let Some(chat) = m.pending.get(&id).cloned() {
                        self.write(&Frame::Chat(chat), FLAG_RETRANSMIT, m).await?;
                    }
                }
                SenderEvent::Failed {
                    key,
                    transmissions,
                    elapsed,
                } => {
                    m.pending.remove(&key);
                    freed = true;
                    let reason = format!(
                        "not acknowledged after {transmissions} attempts in {}s",
                        elapsed.as_secs()
                    );
                    tracing::warn!(id = %key, %reason, "send failed");
                    self.fail(&key, reason);
                }
            }
        }
        if freed { self.flush(m).await } else { Ok(()) }
    }

    fn update_diagnostics(&self, m: &Machines) {
        let net = m.heartbeat.network().to_owned();
        let locked = m.heartbeat.network_state(&net).is_some_and(|s| s.locked);
        *self
            .inner
            .diagnostics
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = crate::types::Diagnostics {
            heartbeat_interval_ms: m.heartbeat.interval().as_millis() as u64,
            heartbeat_locked: locked,
            heartbeats_sent: m.heartbeats_sent,
            srtt_ms: m.qos.rtt().srtt().map(|d| d.as_millis() as u64),
            in_flight: m.qos.in_flight() as u64,
            network: net,
        };
    }

    fn fail(&self, id: &ClientMsgId, reason: String) {
        if let Ok(Some(local_id)) = self.inner.with_db(|db| db.mark_failed(id, &reason)) {
            self.inner.emit(ClientEvent::MessageStatusChanged {
                local_id,
                status: MessageStatus::Failed { reason },
            });
        }
    }

    async fn on_heartbeat_timer(&mut self, m: &mut Machines) -> Result<(), End> {
        match m.heartbeat.handle_timeout(Instant::now().into_std()) {
            Some(HeartbeatAction::Send) => {
                m.heartbeats_sent += 1;
                self.update_diagnostics(m);
                let interval = m.heartbeat.interval().as_millis() as u32;
                self.write(
                    &Frame::Heartbeat(pb::Heartbeat {
                        interval_ms: interval,
                    }),
                    0,
                    m,
                )
                .await
            }
            Some(HeartbeatAction::ConnectionLost) => {
                Err(End::Lost("heartbeat replies stopped".into()))
            }
            None => Ok(()),
        }
    }

    fn publish(&self, applied: Applied) {
        let mut touched = Vec::new();
        for msg in applied.new_messages {
            touched.push((msg.kind, msg.conversation.clone()));
            self.inner.emit(ClientEvent::MessageReceived(msg));
        }
        for (local_id, status) in applied.status_changes {
            self.inner
                .emit(ClientEvent::MessageStatusChanged { local_id, status });
        }
        for local_id in applied.updated {
            if let Ok(Some(msg)) = self.inner.with_db(|db| db.message(local_id)) {
                self.inner.emit(ClientEvent::MessageUpdated(msg));
            }
        }
        touched.extend(applied.conversations);
        let mut seen = Vec::new();
        for c in touched {
            if !seen.contains(&c) {
                self.inner.emit_conversation(c.0, &c.1);
                seen.push(c);
            }
        }
    }

    /// Stores entries, then acknowledges them (never before the commit), and opens or
    /// closes the gap timer.
    async fn store_and_ack(
        &mut self,
        entries: &[pb::TimelineEntry],
        m: &mut Machines,
    ) -> Result<(), End> {
        let applied = self
            .inner
            .with_db(|db| db.apply_entries(entries))
            .map_err(|e| End::Lost(e.to_string()))?;
        self.publish(applied);
        let (cursor, max_seen) = self
            .inner
            .with_db(|db| Ok((db.cursor()?, db.max_seq()?)))
            .map_err(|e| End::Lost(e.to_string()))?;
        let above: Vec<u64> = entries
            .iter()
            .map(|e| e.seq)
            .filter(|s| *s > cursor)
            .collect();
        self.write(
            &Frame::DeliveryAck(pb::DeliveryAck {
                cumulative_seq: cursor,
                seqs: above,
                ..Default::default()
            }),
            0,
            m,
        )
        .await?;
        if max_seen > cursor {
            if self.gap_at.is_none() && self.syncing.is_none() {
                self.gap_at = Some(Instant::now() + self.inner.config.gap_wait);
            }
        } else {
            self.gap_at = None;
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: Frame, m: &mut Machines) -> Result<(), End> {
        match frame {
            Frame::SendResult(r) => {
                let Ok(id) = ClientMsgId::from_slice(&r.client_msg_id) else {
                    return Ok(());
                };
                let code = ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Internal);
                if code == ErrorCode::Ok {
                    m.qos.on_ack(id, Instant::now().into_std());
                    m.pending.remove(&id);
                    let local = self
                        .inner
                        .with_db(|db| {
                            db.mark_sent(&id, r.server_msg_id, r.seq, r.server_ts_ms, r.log_seq)
                        })
                        .map_err(|e| End::Lost(e.to_string()))?;
                    if let Some((local_id, status, released)) = local {
                        self.inner
                            .emit(ClientEvent::MessageStatusChanged { local_id, status });
                        self.publish(Applied {
                            new_messages: released,
                            ..Applied::default()
                        });
                    }
                    self.flush(m).await
                } else if permanent(code) {
                    m.qos.cancel(&id);
                    m.pending.remove(&id);
                    self.fail(&id, code.as_str_name().to_owned());
                    self.flush(m).await
                } else {
                    // Transient (rate limited, busy, storage): not a loss. Take it out of
                    // flight and send it again from the outbox after a pause.
                    tracing::debug!(id = %id, code = code.as_str_name(), "send deferred by the server");
                    m.qos.cancel(&id);
                    m.pending.remove(&id);
                    m.deferred.insert(id, Instant::now() + SERVER_DEFERRAL);
                    Ok(())
                }
            }
            Frame::Push(p) if !p.log.is_empty() => {
                let Some(entry) = p.entry else { return Ok(()) };
                self.on_log_push(p.log, entry, m).await
            }
            Frame::SyncResponse(page) if !page.log.is_empty() => self.on_log_page(page, m).await,
            Frame::Logs(logs) => self.on_logs(logs, m).await,
            Frame::Push(p) => {
                let Some(entry) = p.entry else { return Ok(()) };
                self.head = self.head.max(entry.seq);
                if !m.filter.insert(entry.seq, Instant::now().into_std()) {
                    // Seen: our ACK was lost. Acknowledge again, store nothing.
                    let cursor = self
                        .inner
                        .with_db(|db| db.cursor())
                        .map_err(|e| End::Lost(e.to_string()))?;
                    let seqs = if entry.seq > cursor {
                        vec![entry.seq]
                    } else {
                        vec![]
                    };
                    return self
                        .write(
                            &Frame::DeliveryAck(pb::DeliveryAck {
                                cumulative_seq: cursor,
                                seqs,
                                ..Default::default()
                            }),
                            0,
                            m,
                        )
                        .await;
                }
                self.store_and_ack(&[entry], m).await
            }
            Frame::SyncResponse(page) => {
                self.head = self.head.max(page.head_seq);
                let last = page.entries.last().map(|e| e.seq);
                self.store_and_ack(&page.entries, m).await?;
                let cursor = self
                    .inner
                    .with_db(|db| db.cursor())
                    .map_err(|e| End::Lost(e.to_string()))?;
                self.inner.emit(ClientEvent::SyncProgress {
                    stored: cursor,
                    head: self.head,
                });
                let until = self.syncing.map_or(0, |(_, u)| u);
                match (page.more, last) {
                    (true, Some(last)) => {
                        let id = self.request_id();
                        self.syncing = Some((id, until));
                        let limit = self.inner.config.sync_page;
                        self.write(
                            &Frame::SyncRequest(pb::SyncRequest {
                                request_id: id,
                                after_seq: last,
                                until_seq: until,
                                limit,
                                ..Default::default()
                            }),
                            0,
                            m,
                        )
                        .await
                    }
                    _ => {
                        self.syncing = None;
                        // Another gap (pushes lost while we synced) is pulled next, after the
                        // usual wait; a backlog beyond everything held is caught up now.
                        let max_seen = self
                            .inner
                            .with_db(|db| db.max_seq())
                            .map_err(|e| End::Lost(e.to_string()))?;
                        if max_seen > cursor {
                            self.gap_at = Some(Instant::now() + self.inner.config.gap_wait);
                            Ok(())
                        } else if self.head > cursor {
                            self.pull(m).await
                        } else {
                            Ok(())
                        }
                    }
                }
            }
            Frame::Summaries(s) => {
                self.head = self.head.max(s.head_seq);
                let applied = self
                    .inner
                    .with_db(|db| db.apply_summaries(&s.conversations, s.head_seq, unix_ms()))
                    .map_err(|e| End::Lost(e.to_string()))?;
                self.publish(applied);
                if std::mem::take(&mut self.start_at_head) {
                    let applied = self
                        .inner
                        .with_db(|db| db.start_at(s.head_seq))
                        .map_err(|e| End::Lost(e.to_string()))?;
                    tracing::info!(
                        head = s.head_seq,
                        "fresh install: history stays on the server until paged"
                    );
                    self.publish(applied);
                    self.pull(m).await?;
                }
                Ok(())
            }
            Frame::OpResult(r) => {
                if let Some((kind, conversation, up_to)) = self.reads.remove(&r.request_id) {
                    let code = ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Internal);
                    // Done, or refused for good: forget it. Busy/unavailable: it stays
                    // queued and goes again on the next connection.
                    if !matches!(code, ErrorCode::ServerBusy | ErrorCode::StoreUnavailable) {
                        if code != ErrorCode::Ok {
                            tracing::warn!(%conversation, code = code.as_str_name(), "read mark refused");
                        }
                        self.inner
                            .with_db(|db| db.drop_pending_read(kind, &conversation, up_to))
                            .map_err(|e| End::Lost(e.to_string()))?;
                    }
                } else if let Some(reply) = self.calls.remove(&r.request_id) {
                    let _ = reply.try_send(Ok(Frame::OpResult(r)));
                }
                Ok(())
            }
            Frame::GroupResponse(r) => {
                if let Some(reply) = self.calls.remove(&r.request_id) {
                    let _ = reply.try_send(Ok(Frame::GroupResponse(r)));
                }
                Ok(())
            }
            Frame::HistoryResponse(r) => {
                if let Some(reply) = self.calls.remove(&r.request_id) {
                    let _ = reply.try_send(Ok(Frame::HistoryResponse(r)));
                }
                Ok(())
            }
            Frame::HeartbeatReply(r) => {
                if let Some(rtt) = m
                    .heartbeat
                    .on_reply(Instant::now().into_std(), &r.observed_addr)
                {
                    m.qos.on_rtt_sample(rtt);
                }
                self.update_diagnostics(m);
                Ok(())
            }
            Frame::Kickout(k) => Err(End::Kicked(
                pb::KickReason::try_from(k.reason).unwrap_or_default(),
                k.text,
            )),
            Frame::Error(e) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
                tracing::warn!(code = code.as_str_name(), message = %e.message, request = e.request_id, "server error");
                if self.syncing.is_some_and(|(id, _)| id == e.request_id) {
                    self.syncing = None;
                    self.gap_at = Some(Instant::now() + Duration::from_secs(1));
                }
                self.log_syncing.retain(|_, id| *id != e.request_id);
                if let Some(reply) = self.calls.remove(&e.request_id) {
                    let _ = reply.try_send(Ok(Frame::Error(e)));
                }
                Ok(())
            }
            other => {
                tracing::debug!(kind = ?other.kind(), "ignored frame");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_name_from_server_address() {
        assert_eq!(server_name("127.0.0.1:7443"), "localhost");
        assert_eq!(server_name("[::1]:7443"), "localhost");
        assert_eq!(server_name("chat.example.com:443"), "chat.example.com");
    }
}
