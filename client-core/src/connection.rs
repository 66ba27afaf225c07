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
//! The task is a thin driver, like `quinn` over `quinn-proto`: it moves frames between
//! the QUIC connection and the sans-IO machines and fires their timers, and makes no
//! protocol decision itself. The machines: [`SyncMachine`] (sends and their
//! retransmission, sync, gaps, read marks, large-group logs; see `sync.rs`), the
//! [`SmartHeartbeat`], and the [`Backoff`] between sessions. Local writes happen before
//! anything is acknowledged to the server (store, then `DeliveryAck`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_protocol::backoff::Backoff;
use tern_protocol::frame::{DEFAULT_MAX_FRAME_BODY, Frame};
use tern_protocol::heartbeat::{HeartbeatAction, SmartHeartbeat};
use tern_protocol::io::{Inbound, read_frame};
use tern_protocol::link::{Link, Reader, Transport};
use tern_protocol::{ErrorCode, pb};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout};

use crate::Inner;
use crate::store::{Applied, Db, DbError};
use crate::sync::{LoginInfo, MAX_PUSHES_TOGETHER, SyncConfig, SyncEvent, SyncMachine};
use crate::types::{ClientEvent, ConnectionState};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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

/// A connection that completed its login: its link, the read side, bytes read past
/// the login result, and the result.
pub(crate) type Connected = (Link, Reader, BytesMut, pb::LoginResult);

/// While the path is suspect (see `SyncMachine::path_suspect`), a fresh connection is
/// tried this often...
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// ...with at most this many handshakes under way at once, each given up after
/// `PROBE_HANDSHAKE` (a fresh probe's first packet goes at once; an old one's
/// retransmissions are backed off).
const MAX_PROBES: usize = 3;
const PROBE_HANDSHAKE: Duration = Duration::from_millis(1500);
/// The smart heartbeat's network label while on TCP is the network's label plus this
/// (its NAT timeouts differ from UDP's).
const TCP_LABEL: &str = "/tcp";

/// Why a session ended.
enum End {
    Lost(String),
    /// The server sent something this client cannot read (too large, undecodable):
    /// reported and backed off, never a reconnect loop.
    BadServer(String),
    /// A probe's handshake completed while this connection looked dead: log in there.
    Moved(quinn::Connection),
    NetworkChanged,
    Kicked(pb::KickReason, String),
    LoggedOut,
    Shutdown,
}

pub(crate) enum ConnectError {
    Refused(ErrorCode, String),
    Failed(String),
}

/// The certificates this client trusts: the configured PEM, or the web PKI roots.
pub(crate) fn trust_roots(inner: &Inner) -> Result<rustls::RootCertStore, String> {
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
    Ok(roots)
}

pub(crate) fn endpoint(inner: &Inner) -> Result<quinn::Endpoint, String> {
    let cfg = &inner.config;
    let mut client = tern_protocol::io::client_config(trust_roots(inner)?)?;
    let mut transport = quinn::TransportConfig::default();
    // Liveness is the smart heartbeat's job; QUIC must outlast its longest interval.
    let idle = cfg.heartbeat.background.max + Duration::from_secs(120);
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).map_err(|e| e.to_string())?,
    ));
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    tern_protocol::io::set_congestion(&mut transport, cfg.congestion);
    client.transport_config(Arc::new(transport));
    let bind: std::net::SocketAddr = "[::]:0".parse().expect("valid");
    let mut endpoint = quinn::Endpoint::client(bind)
        .or_else(|_| quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid")))
        .map_err(|e| format!("cannot bind a UDP socket: {e}"))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// The TLS name of the server: the configured one, or the host of the first `server`
/// entry (the TCP and WebSocket transports' default).
pub(crate) fn tls_name(cfg: &crate::ClientConfig) -> String {
    tls_name_for(cfg, &crate::servers::first(&cfg.server))
}

/// The TLS name for the `server` entry `entry`: the configured one, or its host.
pub(crate) fn tls_name_for(cfg: &crate::ClientConfig, entry: &str) -> String {
    cfg.server_name
        .clone()
        .unwrap_or_else(|| server_name(entry))
}

pub(crate) fn server_name(server: &str) -> String {
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

pub(crate) async fn connect(
    inner: &Inner,
    endpoint: &quinn::Endpoint,
    user: &str,
    token: &str,
    handshake_timeout: Duration,
) -> Result<Connected, ConnectError> {
    let conn = handshake(inner, endpoint, handshake_timeout).await?;
    login_on(inner, conn, user, token).await
}

/// The QUIC handshake alone (probes race only this part, so two of them can never both
/// log in and displace each other).
async fn handshake(
    inner: &Inner,
    endpoint: &quinn::Endpoint,
    handshake_timeout: Duration,
) -> Result<quinn::Connection, ConnectError> {
    let cfg = &inner.config;
    let fail = |e: String| ConnectError::Failed(e);
    let candidate = inner.servers.pick().await.map_err(fail)?;
    let addr = candidate.addr;
    let name = tls_name_for(cfg, &candidate.entry);
    let connecting = endpoint
        .connect(addr, &name)
        .map_err(|e| fail(e.to_string()))?;
    let conn = timeout(handshake_timeout, connecting).await;
    match conn {
        Ok(Ok(conn)) => {
            inner.servers.connected(addr);
            Ok(conn)
        }
        Ok(Err(e)) => {
            inner.servers.failed(addr);
            Err(fail(format!("{addr}: {e}")))
        }
        Err(_) => {
            inner.servers.failed(addr);
            Err(fail(format!("{addr}: connect timed out")))
        }
    }
}

/// Logs in on a connection whose handshake completed.
async fn login_on(
    inner: &Inner,
    conn: quinn::Connection,
    user: &str,
    token: &str,
) -> Result<Connected, ConnectError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ConnectError::Failed(e.to_string()))?;
    login_link(
        inner,
        Link::Quic { conn, send },
        Reader::Quic(recv),
        user,
        token,
    )
    .await
}

/// Logs in on a link (QUIC's session stream, or a TLS byte stream).
pub(crate) async fn login_link(
    inner: &Inner,
    mut link: Link,
    mut reader: Reader,
    user: &str,
    token: &str,
) -> Result<Connected, ConnectError> {
    let cfg = &inner.config;
    let fail = |e: String| ConnectError::Failed(e);
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
    link.write_stream(&login.to_bytes(0), WRITE_TIMEOUT)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(4096);
    let answer = async {
        match &mut reader {
            Reader::Quic(r) => read_frame(r, &mut buf, DEFAULT_MAX_FRAME_BODY).await,
            Reader::Stream(r) => read_frame(r, &mut buf, DEFAULT_MAX_FRAME_BODY).await,
        }
    };
    match timeout(CONNECT_TIMEOUT, answer).await {
        Ok(Ok(Some((_, Frame::LoginResult(r))))) => {
            let code = ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Internal);
            if code != ErrorCode::Ok {
                return Err(ConnectError::Refused(code, r.message));
            }
            Ok((link, reader, buf, r))
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

/// After a lost connection with sends waiting, reconnect attempts race like probes (a
/// fresh handshake every [`PROBE_INTERVAL`], no backoff) for this long; then the
/// backoff schedule takes over (an app that stays offline does not keep the radio up).
const RACE_FOR: Duration = Duration::from_secs(60);

/// Connects like [`connect`], but starts a fresh handshake every [`PROBE_INTERVAL`]
/// (at most [`MAX_PROBES`] under way, each given [`PROBE_HANDSHAKE`]) until one logs in,
/// the server refuses the login, or `budget` has passed. A handshake's own
/// retransmissions back off; a fresh one's first packet goes at once, so this connects
/// within one interval of a dead path coming back.
pub(crate) async fn connect_racing(
    inner: &Arc<Inner>,
    endpoint: &quinn::Endpoint,
    user: &str,
    token: &str,
    budget: Duration,
) -> Result<Connected, ConnectError> {
    let end = Instant::now() + budget;
    let mut attempts: tokio::task::JoinSet<Result<quinn::Connection, ConnectError>> =
        tokio::task::JoinSet::new();
    let mut next = Instant::now();
    let mut last = ConnectError::Failed("connect timed out".into());
    loop {
        let may_start = attempts.len() < MAX_PROBES && next < end;
        if !may_start && attempts.is_empty() {
            return Err(last);
        }
        tokio::select! {
            _ = sleep_until(next), if may_start => {
                let (inner, endpoint) = (inner.clone(), endpoint.clone());
                attempts.spawn(async move { handshake(&inner, &endpoint, PROBE_HANDSHAKE).await });
                next = Instant::now() + PROBE_INTERVAL;
            }
            Some(done) = attempts.join_next(), if !attempts.is_empty() => match done {
                Ok(Ok(conn)) => {
                    attempts.abort_all();
                    return login_on(inner, conn, user, token).await;
                }
                Ok(Err(e)) => last = e,
                Err(_) => {}
            },
        }
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

/// The connection task of one logged-in client.
pub(crate) async fn run(
    inner: Arc<Inner>,
    user: String,
    token: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let cfg = inner.config.clone();
    let now = Instant::now().into_std();
    let datagram_sends = cfg.uplink == crate::Uplink::Datagram;
    let mut qos = cfg.qos.clone();
    qos.retransmit = datagram_sends;
    let mut state = Machines {
        sync: SyncMachine::new(
            SyncConfig {
                qos,
                datagram_sends,
                gap_wait: cfg.gap_wait,
                sync_page: cfg.sync_page,
                full_history_sync: cfg.full_history_sync,
            },
            now,
        ),
        heartbeat: SmartHeartbeat::new(cfg.heartbeat.clone(), &cfg.network_label, now),
        backoff: Backoff::new(cfg.backoff.clone(), rand::random()),
        heartbeats_sent: 0,
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
    let mut moved: Option<quinn::Connection> = None;
    // When the last session was lost (not ended on purpose).
    let mut lost_at: Option<Instant> = None;
    loop {
        // Sends are waiting and the loss is recent: race handshakes, no backoff.
        let urgent =
            lost_at.is_some_and(|t| t.elapsed() < RACE_FOR) && sends_waiting(&inner, &state);
        let attempt = match moved.take() {
            Some(conn) => login_on(&inner, conn, &user, &token).await,
            None => {
                inner.set_state(ConnectionState::Connecting);
                let label = state.heartbeat.network().to_owned();
                crate::transport::connect_any(
                    &inner,
                    &endpoint,
                    &user,
                    &token,
                    urgent,
                    CONNECT_TIMEOUT,
                    &label,
                )
                .await
            }
        };
        let mut immediate = false;
        // The server answered and said no (busy, say): always back off.
        let mut refused = false;
        let end = match attempt {
            Ok((link, reader, buf, result)) => {
                inner.max_body.store(
                    result.max_body_bytes.max(1),
                    std::sync::atomic::Ordering::Relaxed,
                );
                state.backoff.on_connected(Instant::now().into_std());
                lost_at = None;
                inner.set_state(ConnectionState::Connected);
                tracing::info!(%user, session = %result.session_id, head = result.inbox_head_seq, "logged in");
                let login = LoginInfo {
                    head: result.inbox_head_seq,
                    next_send_seq: result.next_send_seq,
                    send_rate_per_sec: result.send_rate_per_sec,
                    send_burst: result.send_burst,
                    store_generation: result.store_generation,
                    restored_seq: result.restored_seq,
                };
                let mut session = Session::new(&inner, &endpoint, link, login);
                let end = session.run(reader, buf, &mut state, &mut commands).await;
                state.sync.on_disconnected();
                session.link.close(0, b"bye");
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
                refused = true;
                End::Lost(format!("{}: {message}", code.as_str_name()))
            }
            Err(ConnectError::Failed(e)) => End::Lost(e),
        };
        match end {
            End::Moved(c) => {
                tracing::info!(%user, "the path looked dead: moved to a fresh connection");
                moved = Some(c);
                continue;
            }
            End::Lost(why) => {
                tracing::info!(%user, %why, "connection lost");
                inner.servers.lost();
                let lost = *lost_at.get_or_insert_with(Instant::now);
                if !refused && lost.elapsed() < RACE_FOR && sends_waiting(&inner, &state) {
                    continue; // race the reconnect (the racing attempts are the wait)
                }
            }
            End::BadServer(why) => {
                tracing::error!(%user, %why, "the server sent a frame this client cannot read: backing off");
                inner.set_last_error(why);
            }
            End::NetworkChanged => immediate = true,
            End::Kicked(pb::KickReason::ServerShutdown, text) => {
                // Another node (if there is one) is tried at once.
                immediate = inner.servers.going_away();
                tracing::info!(%user, %text, elsewhere = immediate, "server going away")
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
                    // A message written soon after the loss: try now.
                    Some(Command::Flush)
                        if lost_at.is_some_and(|t| t.elapsed() < RACE_FOR) => break,
                    Some(Command::Flush) | Some(Command::SendReads) => {}
                },
            }
        }
    }
}

/// Whether sends are waiting for the server (in flight, or queued in the outbox).
fn sends_waiting(inner: &Inner, state: &Machines) -> bool {
    state.sync.qos().in_flight() > 0
        || inner
            .with_db(|db| db.outbox_sends(1))
            .is_ok_and(|v| !v.is_empty())
}

/// The sans-IO state that lives across connections.
struct Machines {
    /// Sends, sync, gaps, read marks, large-group logs.
    sync: SyncMachine,
    heartbeat: SmartHeartbeat,
    backoff: Backoff,
    /// Heartbeats sent (diagnostics).
    heartbeats_sent: u64,
}

/// One connection: moves frames between the QUIC connection and the machines, and
/// fires their timers. No protocol decision is made here.
struct Session<'a> {
    inner: &'a Arc<Inner>,
    endpoint: &'a quinn::Endpoint,
    /// QUIC, or TLS over TCP (see [`crate::transport`]).
    link: Link,
    login: LoginInfo,
    /// Requests of the app waiting for their answer, by request id. Dropped with the
    /// session, which tells each caller the connection was lost.
    calls: HashMap<u64, std::sync::mpsc::SyncSender<Result<Frame, String>>>,
    /// Probe connections under way (aborted when the session ends).
    probes: tokio::task::JoinSet<Result<quinn::Connection, ConnectError>>,
    /// UDP datagrams QUIC had received at the last probe tick.
    udp_rx: u64,
    /// A quiet keepalive waits for QUIC's ACK: the ACK frames and `PATH_CHALLENGE`s
    /// received before it went.
    keepalive_mark: Option<(u64, u64)>,
    /// Conversations changed since their last `ConversationUpdated`, in order (see
    /// [`Session::flush_conversations`]).
    touched: Vec<(crate::ConversationKind, String)>,
    touched_set: HashSet<(crate::ConversationKind, String)>,
    /// When `ConversationUpdated` events last went out.
    touched_at: Instant,
}

/// While a catch-up has sync pages in flight, a conversation's `ConversationUpdated`
/// goes out at most this often (each costs a read of the conversation and its last
/// message, and no app redraws five hundred conversations per page); when the catch-up
/// ends, at once.
const CONVERSATION_EVENTS_EVERY: Duration = Duration::from_millis(250);

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // The session ends: what changed is told now, not at some later update.
        self.flush_conversations();
    }
}

fn lost(e: impl std::fmt::Display) -> End {
    End::Lost(e.to_string())
}

impl<'a> Session<'a> {
    fn new(
        inner: &'a Arc<Inner>,
        endpoint: &'a quinn::Endpoint,
        link: Link,
        login: LoginInfo,
    ) -> Self {
        Session {
            inner,
            endpoint,
            link,
            login,
            calls: HashMap::new(),
            probes: tokio::task::JoinSet::new(),
            udp_rx: 0,
            keepalive_mark: None,
            touched: Vec::new(),
            touched_set: HashSet::new(),
            // The first change (the summaries of a catch-up) is told at once.
            touched_at: Instant::now()
                .checked_sub(CONVERSATION_EVENTS_EVERY)
                .unwrap_or_else(Instant::now),
        }
    }

    async fn write(&mut self, frame: &Frame, flags: u8, m: &mut Machines) -> Result<(), End> {
        if !matches!(frame, Frame::Heartbeat(_)) {
            m.heartbeat.on_sent(Instant::now().into_std());
        }
        self.link
            .write_frame(frame, flags, WRITE_TIMEOUT)
            .await
            .map_err(lost)
    }

    /// The QUIC connection, when the session runs on QUIC.
    fn quic(&self) -> Option<&quinn::Connection> {
        match &self.link {
            Link::Quic { conn, .. } => Some(conn),
            Link::Stream { .. } => None,
        }
    }

    /// Writes on the stream whatever the frame's kind prefers.
    async fn write_reliable(
        &mut self,
        frame: &Frame,
        flags: u8,
        m: &mut Machines,
    ) -> Result<(), End> {
        m.heartbeat.on_sent(Instant::now().into_std());
        self.link
            .write_stream(&frame.to_bytes(flags), WRITE_TIMEOUT)
            .await
            .map_err(lost)
    }

    /// Runs one step of the sync machine against the store.
    fn step<T>(
        &self,
        m: &mut Machines,
        f: impl FnOnce(&mut SyncMachine, &mut Db) -> Result<T, DbError>,
    ) -> Result<T, End> {
        self.inner.with_db(|db| f(&mut m.sync, db)).map_err(lost)
    }

    /// Tells the app what the machine wants told, then sends what it wants sent. The app
    /// first: what it is told is already committed, and a write can wait on the network
    /// (a full stream on a weak path), which held messages already stored back from the
    /// app (e2e's catch-up test once saw 521 of 1,000 events trail the cursor).
    async fn drain(&mut self, m: &mut Machines) -> Result<(), End> {
        self.tell_app(m);
        while let Some(t) = m.sync.poll_transmit() {
            if t.reliable {
                self.write_reliable(&t.frame, t.flags, m).await?;
            } else {
                self.write(&t.frame, t.flags, m).await?;
            }
        }
        Ok(())
    }

    fn tell_app(&mut self, m: &mut Machines) {
        while let Some(event) = m.sync.poll_event() {
            match event {
                SyncEvent::Applied(applied) => self.publish(applied),
                SyncEvent::Status { local_id, status } => self
                    .inner
                    .emit(ClientEvent::MessageStatusChanged { local_id, status }),
                SyncEvent::Progress { stored, head } => {
                    self.inner.emit(ClientEvent::SyncProgress { stored, head })
                }
            }
        }
        if !self.touched.is_empty()
            && (!m.sync.catching_up() || self.touched_at.elapsed() >= CONVERSATION_EVENTS_EVERY)
        {
            self.flush_conversations();
        }
    }

    /// Tells the app of every conversation changed since the last time.
    fn flush_conversations(&mut self) {
        self.touched_at = Instant::now();
        self.touched_set.clear();
        for (kind, id) in std::mem::take(&mut self.touched) {
            self.inner.emit_conversation(kind, &id);
        }
    }

    async fn run(
        &mut self,
        reader: Reader,
        buf: BytesMut,
        m: &mut Machines,
        commands: &mut mpsc::UnboundedReceiver<Command>,
    ) -> End {
        let (tx, mut inbound) = mpsc::channel(256);
        self.link
            .spawn_readers(reader, buf, DEFAULT_MAX_FRAME_BODY, tx);
        let transport = self.link.transport();
        tracing::info!(transport = transport.as_str(), "session transport");
        let before = self
            .inner
            .diagnostics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .transport
            .clone();
        if before.as_deref() != Some(transport.as_str()) {
            self.inner.emit(ClientEvent::TransportChanged {
                transport: transport.as_str().to_owned(),
            });
        }
        // Sends go in datagrams and are retransmitted by the engine only on QUIC.
        let uplink_datagrams = self.inner.config.uplink == crate::Uplink::Datagram;
        m.sync
            .set_datagrams(self.link.has_datagrams(), uplink_datagrams);
        // NAT timeouts differ for TCP: the smart heartbeat learns a separate interval.
        let label = m.heartbeat.network().to_owned();
        let base = label.strip_suffix(TCP_LABEL).unwrap_or(&label).to_owned();
        let wanted = match transport {
            Transport::Tcp | Transport::WebSocket => format!("{base}{TCP_LABEL}"),
            Transport::Quic => base,
        };
        if wanted != label {
            m.heartbeat.network_changed(&wanted);
        }
        let now = Instant::now().into_std();
        m.heartbeat.on_connected(now);
        // QUIC shows the client its packets acknowledged: locked heartbeats go quiet.
        m.heartbeat.set_acks_observable(self.quic().is_some());
        // The handshake measured the path: the send timers start from it, not from the
        // engine's conservative initial RTO.
        if let Some(conn) = self.quic() {
            m.sync.on_rtt_sample(conn.rtt());
        }
        let mut rtt_fed = Instant::now();
        // On TCP (automatic mode), QUIC is tried again now and then.
        let reprobe = (transport == Transport::Tcp
            && self.inner.config.transport == crate::TransportMode::Auto)
            .then_some(self.inner.config.quic_reprobe);
        let mut reprobe_at = reprobe.map(|every| Instant::now() + every);
        self.update_diagnostics(m);
        let login = self.login;
        if let Err(end) = self.step(m, |sync, db| sync.on_connected(login, now, db)) {
            return end;
        }
        let mut last_probe: Option<Instant> = None;
        loop {
            if let Err(end) = self.drain(m).await {
                return end;
            }
            let probe_at = m
                .sync
                .suspect_at()
                .filter(|_| self.link.has_datagrams())
                .map(|t| {
                    let t = Instant::from_std(t);
                    last_probe.map_or(t, |p| t.max(p + PROBE_INTERVAL))
                });
            let sync_at = m.sync.poll_timeout().map(Instant::from_std);
            let hb_at = Instant::from_std(m.heartbeat.poll_timeout());
            let far = Instant::now() + Duration::from_secs(3600);
            let step = tokio::select! {
                cmd = commands.recv() => self.on_command(cmd, m).await,
                frame = inbound.recv() => match frame {
                    Some(Inbound::Frame(f) | Inbound::Datagram(f)) => {
                        // QUIC measures the path's RTT on every ACK; the send engine's own
                        // samples are rare (Karn's rule, and answers that waited behind a
                        // gap do not count), so it also learns from QUIC, once a second.
                        // The path's loss, likewise: on a lossy path sends go twice.
                        if rtt_fed.elapsed() >= Duration::from_secs(1) {
                            rtt_fed = Instant::now();
                            if let Some(conn) = self.quic() {
                                m.sync.on_rtt_sample(conn.rtt());
                                if self.inner.config.loss_copies {
                                    let sample = tern_protocol::redundancy::PathSample::of(conn);
                                    m.sync.on_path_sample(sample, Instant::now().into_std());
                                    self.update_diagnostics(m);
                                }
                            }
                        }
                        // Frames already waiting behind this one are handled with it:
                        // pushes that arrived together are stored and acknowledged
                        // together (one commit, one ACK, one receipt per sender).
                        let mut frames = vec![*f];
                        let mut after = None;
                        while frames.len() < MAX_PUSHES_TOGETHER {
                            match inbound.try_recv() {
                                Ok(Inbound::Frame(f) | Inbound::Datagram(f)) => frames.push(*f),
                                Ok(other) => {
                                    after = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        match (self.on_frames(frames, m), after) {
                            (Err(end), _) => Err(end),
                            (Ok(()), Some(Inbound::Closed(why))) => Err(End::Lost(why)),
                            (Ok(()), Some(Inbound::Invalid(e))) => {
                                Err(End::BadServer(format!("bad frame from server: {e}")))
                            }
                            (Ok(()), _) => Ok(()),
                        }
                    }
                    Some(Inbound::Closed(why)) => Err(End::Lost(why)),
                    Some(Inbound::Invalid(e)) => Err(End::BadServer(format!("bad frame from server: {e}"))),
                    None => Err(End::Lost("reader stopped".into())),
                },
                _ = sleep_until(sync_at.unwrap_or(far)), if sync_at.is_some() => {
                    let now = Instant::now().into_std();
                    self.step(m, |sync, db| sync.handle_timeout(now, db))
                }
                _ = sleep_until(hb_at) => self.on_heartbeat_timer(m).await,
                _ = sleep_until(probe_at.unwrap_or(far)), if probe_at.is_some() => {
                    last_probe = Some(Instant::now());
                    self.probe();
                    Ok(())
                }
                _ = sleep_until(reprobe_at.unwrap_or(far)), if reprobe_at.is_some() => {
                    reprobe_at = reprobe.map(|every| Instant::now() + every);
                    if self.probes.is_empty() {
                        tracing::debug!("on TCP: trying QUIC again");
                        let (inner, endpoint) = (self.inner.clone(), self.endpoint.clone());
                        self.probes.spawn(async move {
                            handshake(&inner, &endpoint, PROBE_HANDSHAKE).await
                        });
                    }
                    Ok(())
                }
                Some(done) = self.probes.join_next(), if !self.probes.is_empty() => match done {
                    Ok(Ok(conn)) => Err(End::Moved(conn)),
                    _ => Ok(()),
                },
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Starts a probe: a fresh connection and login on the same endpoint, raced against
    /// this one while it looks dead (see [`SyncMachine::path_suspect`]).
    fn probe(&mut self) {
        // QUIC packets still arrive (a slow server whose store stalls, not a dead
        // path): no probe, so an overloaded server gets no reconnect storm.
        let Some(conn) = self.quic() else {
            return;
        };
        let rx = conn.stats().udp_rx.datagrams;
        if std::mem::replace(&mut self.udp_rx, rx) != rx {
            return;
        }
        if self.probes.len() >= MAX_PROBES {
            return;
        }
        if self.probes.is_empty() {
            // The first probe goes back to this node (the path may have blinked); the
            // ones racing beside it go to the others, if there are others (the node
            // may be dead).
            self.inner.servers.lost();
        }
        tracing::debug!("path suspect: probing with a fresh connection");
        let (inner, endpoint) = (self.inner.clone(), self.endpoint.clone());
        self.probes
            .spawn(async move { handshake(&inner, &endpoint, PROBE_HANDSHAKE).await });
    }

    async fn on_command(&mut self, cmd: Option<Command>, m: &mut Machines) -> Result<(), End> {
        let now = Instant::now().into_std();
        match cmd {
            Some(Command::Flush) => self.step(m, |sync, db| sync.flush(now, db)),
            Some(Command::SendReads) => self.step(m, |sync, db| sync.send_reads(db)),
            Some(Command::Call(mut call)) => {
                let id = m.sync.next_request_id();
                if !set_request_id(&mut call.frame, id) {
                    let _ = call.reply.try_send(Err("not a request frame".into()));
                    return Ok(());
                }
                self.calls.insert(id, call.reply);
                m.sync.on_frame_sent(now);
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
                if !self.link.has_datagrams() {
                    // A TCP connection cannot migrate: reconnect on the new network.
                    return Err(End::NetworkChanged);
                }
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
                self.link.finish().await;
                self.link.closed(Duration::from_millis(500)).await;
                Err(End::LoggedOut)
            }
            Some(Command::Shutdown) | None => Err(End::Shutdown),
        }
    }

    fn update_diagnostics(&self, m: &Machines) {
        let net = m.heartbeat.network().to_owned();
        let locked = m.heartbeat.network_state(&net).is_some_and(|s| s.locked());
        let mut d = self
            .inner
            .diagnostics
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *d = crate::types::Diagnostics {
            last_error: d.last_error.take(),
            transport: Some(self.link.transport().as_str().to_owned()),
            heartbeat_interval_ms: m.heartbeat.interval().as_millis() as u64,
            heartbeat_locked: locked,
            heartbeats_sent: m.heartbeats_sent,
            srtt_ms: m.sync.qos().rtt().srtt().map(|d| d.as_millis() as u64),
            in_flight: m.sync.qos().in_flight() as u64,
            sends_copied: m.sync.sends_copied(),
            network: net,
        };
    }

    /// A quiet keepalive is settled when QUIC has received an ACK frame since it went
    /// (the server's QUIC acknowledged it); a `PATH_CHALLENGE` received meanwhile means
    /// the server saw a new address: the NAT binding had expired.
    fn settle_keepalive(&mut self, m: &mut Machines) {
        let (Some((acks, challenges)), Some(conn)) = (self.keepalive_mark, self.quic()) else {
            return;
        };
        let rx = conn.stats().frame_rx;
        if rx.acks > acks {
            self.keepalive_mark = None;
            m.heartbeat
                .on_acked(Instant::now().into_std(), rx.path_challenge > challenges);
        }
    }

    async fn on_heartbeat_timer(&mut self, m: &mut Machines) -> Result<(), End> {
        if m.heartbeat.awaiting_ack() {
            self.settle_keepalive(m);
        }
        match m.heartbeat.handle_timeout(Instant::now().into_std()) {
            Some(action @ (HeartbeatAction::Send | HeartbeatAction::Keepalive)) => {
                let quiet = action == HeartbeatAction::Keepalive;
                m.heartbeats_sent += 1;
                self.update_diagnostics(m);
                self.keepalive_mark = quiet
                    .then(|| self.quic().map(|c| c.stats().frame_rx))
                    .flatten()
                    .map(|rx| (rx.acks, rx.path_challenge));
                let interval = m.heartbeat.interval().as_millis() as u32;
                self.write(
                    &Frame::Heartbeat(pb::Heartbeat {
                        interval_ms: interval,
                        quiet,
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

    /// Tells the app what a store change did; the conversations it touched are told in
    /// [`Session::drain`] (at once, or paced during a catch-up).
    fn publish(&mut self, applied: Applied) {
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
        for c in touched {
            if self.touched_set.insert(c.clone()) {
                self.touched.push(c);
            }
        }
    }

    /// A frame from the server: the sync machine's first; what it hands back is the
    /// link's (heartbeat replies, kickouts) or the answer to an app request.
    fn on_frames(&mut self, frames: Vec<Frame>, m: &mut Machines) -> Result<(), End> {
        let now = Instant::now().into_std();
        let back = self.step(m, |sync, db| sync.handle_frames(frames, now, db))?;
        for frame in back {
            self.on_frame(frame, now, m)?;
        }
        Ok(())
    }

    /// A frame the sync machine handed back: the driver's own business.
    fn on_frame(
        &mut self,
        frame: Frame,
        now: std::time::Instant,
        m: &mut Machines,
    ) -> Result<(), End> {
        let answer = |calls: &mut HashMap<_, std::sync::mpsc::SyncSender<_>>, id, f| {
            if let Some(reply) = calls.remove(&id) {
                let _ = reply.try_send(Ok(f));
            }
        };
        match frame {
            Frame::HeartbeatReply(r) => {
                if let Some(rtt) = m.heartbeat.on_reply(now, &r.observed_addr) {
                    m.sync.on_rtt_sample(rtt);
                }
                self.update_diagnostics(m);
            }
            Frame::Kickout(k) => {
                return Err(End::Kicked(
                    pb::KickReason::try_from(k.reason).unwrap_or_default(),
                    k.text,
                ));
            }
            Frame::OpResult(r) => answer(&mut self.calls, r.request_id, Frame::OpResult(r)),
            Frame::GroupResponse(r) => {
                answer(&mut self.calls, r.request_id, Frame::GroupResponse(r))
            }
            Frame::HistoryResponse(r) => {
                answer(&mut self.calls, r.request_id, Frame::HistoryResponse(r))
            }
            Frame::Error(e) => {
                let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
                tracing::warn!(code = code.as_str_name(), message = %e.message, request = e.request_id, "server error");
                answer(&mut self.calls, e.request_id, Frame::Error(e));
            }
            other => tracing::debug!(kind = ?other.kind(), "ignored frame"),
        }
        Ok(())
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
