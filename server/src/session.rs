//! One client connection, from handshake to close.
//!
//! A session is one task that owns the connection's send side and a small amount of
//! state: the push QoS engine ([`tern_protocol::qos::Sender`] keyed by inbox seq), the
//! rate limiter, and the requests in flight. Everything that can be slow happens
//! off the loop: frames are read by a reader task (stream and datagrams), and store
//! operations and reads run as futures the loop polls alongside its queues. So a slow
//! disk never stalls heartbeats, and a session never blocks another one.
//!
//! Order of a session's sends is kept by queueing each store write when its frame is
//! handled ([`Store::store_message`] is ordered at call time), even though results may
//! come back to the client in any order (they carry the client message id).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use tern_protocol::frame::{FLAG_RETRANSMIT, Frame};
use tern_protocol::io::{Inbound, ReadError, read_frame, send_as_datagram, spawn_session_readers};
use tern_protocol::qos::{Sender, SenderEvent};
use tern_protocol::{ClientMsgId, ErrorCode, is_valid_user_id, pb};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, sleep_until, timeout};

use crate::auth::{LoginRequest, TokenVerifier};
use crate::config::Config;
use crate::registry::{Push, Registry, SessionCmd, SessionInfo};
use crate::store::{Fanout, NewMessage, Store, StoreError};

/// Time allowed from handshake to a complete `Login` frame.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that cannot make progress for this long ends the session.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest sync page.
pub const MAX_SYNC_PAGE: u32 = 500;
/// Sync page size when the client asks for 0.
const DEFAULT_SYNC_PAGE: u32 = 200;
/// Most conversations per summaries response.
pub const MAX_SUMMARIES: u32 = 200;
/// Most recent messages per conversation summary.
pub const MAX_SUMMARY_MESSAGES: u32 = 20;

/// State shared by every session.
pub struct Shared {
    /// Configuration.
    pub config: Config,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Token checks.
    pub verifier: Arc<dyn TokenVerifier>,
    /// Online sessions.
    pub registry: Registry,
    /// Logins in progress.
    pub login_permits: Semaphore,
    /// Set when the server is draining.
    pub shutting_down: AtomicBool,
    /// Offline push and c2s webhooks.
    pub webhooks: crate::webhook::Webhooks,
    /// Members of large groups, for routing their log entries (see [`Shared::fan_out`]).
    pub log_members: dashmap::DashMap<String, Arc<Vec<String>>>,
    next_id: AtomicU64,
}

impl Shared {
    /// Shared state for a server.
    pub fn new(config: Config, store: Arc<dyn Store>, verifier: Arc<dyn TokenVerifier>) -> Self {
        Shared {
            registry: Registry::new(config.kick_policy),
            login_permits: Semaphore::new(config.max_concurrent_logins),
            shutting_down: AtomicBool::new(false),
            webhooks: crate::webhook::Webhooks::new(),
            log_members: dashmap::DashMap::new(),
            next_id: AtomicU64::new(1),
            config,
            store,
            verifier,
        }
    }

    /// Routes new timeline entries to online sessions (except the one that caused them):
    /// an entry of a user's timeline to that user's sessions, an entry of a large group's
    /// log to the sessions of every member. A large group's members come from a cache
    /// (filled by a read on a miss, emptied by every membership change): the log, not the
    /// push, is the truth, so a push that misses a member who just joined is caught up
    /// by that member's next pull.
    pub fn fan_out(self: &Arc<Self>, fanout: Vec<Fanout>, except: Option<u64>) {
        for f in fanout {
            let entry = Arc::new(f.entry);
            let Some(route) = f.log else {
                let n = self
                    .registry
                    .route(&f.user, &Push { log: None, entry }, except);
                metrics::counter!("tern_pushes_routed_total").increment(n as u64);
                continue;
            };
            let push = Push {
                log: Some(Arc::from(route.group.as_str())),
                entry,
            };
            let cached = self.log_members.get(&route.group).map(|m| m.clone());
            if let Some(members) = cached {
                self.route_log(&members, &push, except);
                continue;
            }
            let shared = self.clone();
            tokio::spawn(async move {
                match shared.store.group_info(&route.group).await {
                    Ok(Some(info)) => {
                        let members = Arc::new(info.members);
                        shared
                            .log_members
                            .insert(route.group.clone(), members.clone());
                        shared.route_log(&members, &push, except);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(group = %route.group, error = %e, "members not read; log entry left for pulls")
                    }
                }
            });
        }
    }

    fn route_log(&self, members: &[String], push: &Push, except: Option<u64>) {
        let n: usize = members
            .iter()
            .map(|m| self.registry.route(m, push, except))
            .sum();
        metrics::counter!("tern_pushes_routed_total").increment(n as u64);
    }
}

fn code_name(code: ErrorCode) -> &'static str {
    code.as_str_name()
}

/// Dotted-number comparison: "1.10.0" > "1.9.3". Non-numeric parts count as 0.
fn version_lt(have: &str, min: &str) -> bool {
    let parse = |v: &str| {
        v.split('.')
            .map(|p| p.trim().parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    let (mut a, mut b) = (parse(have), parse(min));
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    a < b
}

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
    /// Consecutive refusals.
    pub refused: u32,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: burst as f64,
            rate: rate as f64,
            burst: burst as f64,
            last: now,
            refused: 0,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused = 0;
            true
        } else {
            self.refused += 1;
            false
        }
    }
}

/// Accepts one connection and runs its session to the end.
pub async fn handle_incoming(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%remote, error = %e, "handshake failed");
            metrics::counter!("tern_handshake_failures_total").increment(1);
            return;
        }
    };
    // Boxed: the login future is large and short-lived; inline, it would size the task
    // of every session for its whole life.
    if let Some(session) = Box::pin(login(&shared, conn)).await {
        session.run().await;
    }
}

async fn write(send: &mut quinn::SendStream, frame: &Frame, flags: u8) -> Result<(), String> {
    write_bytes(send, &frame.to_bytes(flags)).await
}

async fn write_bytes(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), String> {
    match timeout(WRITE_TIMEOUT, send.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err("write timed out".into()),
    }
}

/// Answers with an error frame and closes the connection.
async fn reject(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    frame: Frame,
    code: ErrorCode,
) {
    let _ = write(send, &frame, 0).await;
    let _ = send.finish();
    // Give the frame a moment to leave before the close overtakes it.
    let _ = timeout(Duration::from_millis(300), conn.closed()).await;
    conn.close(
        quinn::VarInt::from_u32(code as u32),
        code_name(code).as_bytes(),
    );
}

async fn login(shared: &Arc<Shared>, conn: quinn::Connection) -> Option<Session> {
    let remote = conn.remote_address();
    let (mut send, mut recv) = match timeout(LOGIN_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::NotLoggedIn as u32),
                b"no session stream",
            );
            return None;
        }
    };
    let mut buf = BytesMut::with_capacity(1024);
    let max_frame = tern_protocol::frame::DEFAULT_MAX_FRAME_BODY;
    let login = match timeout(LOGIN_TIMEOUT, read_frame(&mut recv, &mut buf, max_frame)).await {
        Ok(Ok(Some((_, Frame::Login(l))))) => l,
        Ok(Ok(Some((_, other)))) => {
            tracing::info!(%remote, kind = ?other.kind(), "first frame was not Login");
            metrics::counter!("tern_logins_total", "result" => "UNEXPECTED_FRAME").increment(1);
            let f = Frame::error(
                ErrorCode::UnexpectedFrame,
                "the first frame must be Login",
                0,
            );
            reject(&conn, &mut send, f, ErrorCode::UnexpectedFrame).await;
            return None;
        }
        Ok(Err(ReadError::Frame(e))) => {
            tracing::info!(%remote, error = %e, "bad frame before login");
            metrics::counter!("tern_frames_rejected_total", "code" => code_name(e.code()))
                .increment(1);
            reject(
                &conn,
                &mut send,
                Frame::error(e.code(), e.to_string(), 0),
                e.code(),
            )
            .await;
            return None;
        }
        Ok(_) | Err(_) => {
            tracing::debug!(%remote, "no login frame");
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::NotLoggedIn as u32),
                b"login timeout",
            );
            return None;
        }
    };
    let refuse = |code: ErrorCode, message: String| {
        metrics::counter!("tern_logins_total", "result" => code_name(code)).increment(1);
        tracing::info!(%remote, user = %login.user_id, code = code_name(code), %message, "login refused");
        Frame::LoginResult(pb::LoginResult {
            code: code as i32,
            message,
            server_time_ms: tern_protocol::unix_ms(),
            ..Default::default()
        })
    };
    let outcome: Result<(), (ErrorCode, String)> = async {
        let cfg = &shared.config;
        if shared.shutting_down.load(Ordering::Relaxed) {
            return Err((ErrorCode::ShuttingDown, "server is shutting down".into()));
        }
        if !is_valid_user_id(&login.user_id)
            || login.device_id.is_empty()
            || login.device_id.len() > 128
        {
            return Err((
                ErrorCode::InvalidArgument,
                "invalid user_id or device_id".into(),
            ));
        }
        if let Some(min) = &cfg.min_client_version {
            if version_lt(&login.client_version, min) {
                return Err((
                    ErrorCode::UpgradeRequired,
                    format!("client version {min} or newer required"),
                ));
            }
        }
        shared
            .verifier
            .verify(LoginRequest {
                user: &login.user_id,
                device: &login.device_id,
                platform: pb::Platform::try_from(login.platform)
                    .unwrap_or(pb::Platform::Unspecified),
                token: &login.token,
            })
            .await
            .map_err(|e| (e.code(), e.to_string()))?;
        shared
            .store
            .record_login(&login.user_id, &login.device_id)
            .await
            .map_err(store_failure)?;
        Ok(())
    }
    .await;
    // Held until the login result is written: bounds concurrent login work.
    let Ok(_permit) = shared.login_permits.try_acquire() else {
        let code = ErrorCode::ServerBusy;
        reject(
            &conn,
            &mut send,
            refuse(code, "too many logins in progress".into()),
            code,
        )
        .await;
        return None;
    };
    if let Err((code, message)) = outcome {
        reject(&conn, &mut send, refuse(code, message), code).await;
        return None;
    }
    let head = match shared.store.head_seq(&login.user_id).await {
        Ok(h) => h,
        Err(e) => {
            let (code, message) = store_failure(e);
            reject(&conn, &mut send, refuse(code, message), code).await;
            return None;
        }
    };

    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let platform = pb::Platform::try_from(login.platform).unwrap_or(pb::Platform::Unspecified);
    let info = SessionInfo {
        id,
        user: login.user_id.clone(),
        device: login.device_id.clone(),
        platform,
        remote,
        since: SystemTime::now(),
        tx: cmd_tx,
    };
    let Some(displaced) = shared
        .registry
        .try_register(info, shared.config.max_sessions)
    else {
        let code = ErrorCode::ServerBusy;
        reject(
            &conn,
            &mut send,
            refuse(code, "session limit reached".into()),
            code,
        )
        .await;
        return None;
    };
    for (old, cmd) in displaced {
        tracing::info!(user = %old.user, old_device = %old.device, new_device = %login.device_id, "session displaced");
        tokio::spawn(async move {
            let _ = old.tx.send(cmd).await;
        });
    }
    metrics::gauge!("tern_sessions").set(shared.registry.len() as f64);
    let result = Frame::LoginResult(pb::LoginResult {
        code: ErrorCode::Ok as i32,
        message: String::new(),
        server_time_ms: tern_protocol::unix_ms(),
        session_id: format!("{id:x}"),
        heartbeat_timeout_ms: shared.config.heartbeat_timeout.as_millis() as u32,
        inbox_head_seq: head,
        max_body_bytes: shared.config.max_body_bytes,
    });
    if let Err(e) = write(&mut send, &result, 0).await {
        tracing::debug!(%remote, error = %e, "login result not delivered");
        shared.registry.unregister(&login.user_id, id);
        return None;
    }
    metrics::counter!("tern_logins_total", "result" => "OK").increment(1);
    tracing::info!(%remote, user = %login.user_id, device = %login.device_id, session = id, "logged in");

    let (in_tx, in_rx) = mpsc::channel(256);
    spawn_session_readers(
        conn.clone(),
        recv,
        buf,
        tern_protocol::frame::DEFAULT_MAX_FRAME_BODY,
        in_tx,
    );
    let now = Instant::now();
    Some(Session {
        bucket: TokenBucket::new(shared.config.rate_per_sec, shared.config.rate_burst, now),
        shared: shared.clone(),
        conn,
        send,
        id,
        user: login.user_id,
        device: login.device_id,
        platform,
        cmd_rx,
        inbound: in_rx,
        push_qos: Sender::new(shared.config.push_qos.config(), now.into_std()),
        pending_pushes: HashMap::new(),
        logs: Vec::new(),
        tasks: FuturesUnordered::new(),
        last_rx: now,
    })
}

/// The wire code for a failed store operation. Refusals (not a member, recall too
/// late, ...) are answers, not faults; only real storage trouble is logged as an error.
pub(crate) fn store_failure(e: StoreError) -> (ErrorCode, String) {
    let refused = |code| (code, e.to_string());
    match e {
        StoreError::UnknownRecipient => refused(ErrorCode::RecipientNotFound),
        StoreError::GroupNotFound => refused(ErrorCode::GroupNotFound),
        StoreError::NotAllowed(_) => refused(ErrorCode::NotAllowed),
        StoreError::GroupFull => refused(ErrorCode::GroupFull),
        StoreError::MessageNotFound => refused(ErrorCode::MessageNotFound),
        StoreError::RecallExpired => refused(ErrorCode::RecallExpired),
        StoreError::Invalid(_) => refused(ErrorCode::InvalidArgument),
        // Overload, not a fault: the client is told SERVER_BUSY and resends. Counted,
        // logged at debug (one line per refused frame would flood the log exactly
        // when the server is busiest).
        StoreError::Busy => {
            metrics::counter!("tern_store_busy_total").increment(1);
            tracing::debug!(error = %e, "store busy");
            (ErrorCode::ServerBusy, e.to_string())
        }
        _ => {
            tracing::error!(error = %e, "store failure");
            (ErrorCode::StoreUnavailable, e.to_string())
        }
    }
}

/// Why a session loop ended.
enum End {
    /// Connection or stream gone.
    Gone(String),
    /// The session must close with this code (frame already sent).
    Close(ErrorCode, &'static str),
}

struct Session {
    shared: Arc<Shared>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    id: u64,
    user: String,
    device: String,
    platform: pb::Platform,
    cmd_rx: mpsc::Receiver<SessionCmd>,
    inbound: mpsc::Receiver<Inbound>,
    /// Keyed by (log number, seq).
    push_qos: Sender<PushKey>,
    /// Large groups whose log entries this session pushed; a group's number is its
    /// index + 1.
    logs: Vec<Arc<str>>,
    pending_pushes: HashMap<PushKey, Arc<pb::TimelineEntry>>,
    bucket: TokenBucket,
    tasks: FuturesUnordered<BoxFuture<'static, Option<Frame>>>,
    last_rx: Instant,
}

impl Session {
    async fn run(mut self) {
        let end = self.run_loop().await;
        self.shared.registry.unregister(&self.user, self.id);
        metrics::gauge!("tern_sessions").set(self.shared.registry.len() as f64);
        match end {
            End::Gone(why) => {
                tracing::info!(user = %self.user, device = %self.device, session = self.id, %why, "session ended");
                self.conn.close(quinn::VarInt::from_u32(0), b"bye");
            }
            End::Close(code, why) => {
                tracing::info!(user = %self.user, session = self.id, code = code_name(code), why, "session closed");
                // Replies already under way (e.g. results of messages the store has
                // committed) still go out before the close.
                let drain = async {
                    while let Some(reply) = self.tasks.next().await {
                        if let Some(frame) = reply {
                            if write(&mut self.send, &frame, 0).await.is_err() {
                                break;
                            }
                        }
                    }
                };
                let _ = timeout(Duration::from_secs(2), drain).await;
                let _ = self.send.finish();
                let _ = timeout(Duration::from_millis(500), self.conn.closed()).await;
                self.conn
                    .close(quinn::VarInt::from_u32(code as u32), why.as_bytes());
            }
        }
    }

    /// Sends a frame: in a datagram when it is a QoS frame that fits (see
    /// [`FrameKind::prefers_datagram`](tern_protocol::FrameKind::prefers_datagram)),
    /// otherwise on the session stream.
    async fn write(&mut self, frame: &Frame, flags: u8) -> Result<(), End> {
        let bytes = frame.to_bytes(flags);
        if send_as_datagram(&self.conn, frame, &bytes) {
            return Ok(());
        }
        write_bytes(&mut self.send, &bytes).await.map_err(End::Gone)
    }

    async fn run_loop(&mut self) -> End {
        let hb_timeout = self.shared.config.heartbeat_timeout;
        loop {
            let qos_at = self.push_qos.poll_timeout().map(Instant::from_std);
            let idle_at = self.last_rx + hb_timeout;
            let step = tokio::select! {
                // Handlers are boxed: inline, their futures made every session's task
                // (idle ones included) as large as the largest handler.
                cmd = self.cmd_rx.recv() => Box::pin(self.on_command(cmd)).await,
                inbound = self.inbound.recv() => match inbound {
                    Some(Inbound::Frame(f)) => {
                        self.last_rx = Instant::now();
                        Box::pin(self.on_frame(*f)).await
                    }
                    Some(Inbound::Invalid(e)) => {
                        tracing::info!(user = %self.user, error = %e, "bad frame");
                        metrics::counter!("tern_frames_rejected_total", "code" => code_name(e.code())).increment(1);
                        let f = Frame::error(e.code(), e.to_string(), 0);
                        match Box::pin(self.write(&f, 0)).await {
                            Ok(()) => Err(End::Close(e.code(), "bad frame")),
                            Err(end) => Err(end),
                        }
                    }

                    Some(Inbound::Closed(why)) => Err(End::Gone(why)),
                    None => Err(End::Gone("reader stopped".into())),
                },
                Some(reply) = self.tasks.next(), if !self.tasks.is_empty() => match reply {
                    Some(frame) => Box::pin(self.write(&frame, 0)).await,
                    None => Ok(()),
                },
                _ = sleep_until(qos_at.unwrap_or(idle_at)), if qos_at.is_some() => Box::pin(self.on_qos_timer()).await,
                _ = sleep_until(idle_at) => {
                    tracing::info!(user = %self.user, session = self.id, "heartbeat timeout");
                    metrics::counter!("tern_sessions_expired_total").increment(1);
                    let kick = Frame::Kickout(pb::Kickout {
                        reason: pb::KickReason::IdleTimeout as i32,
                        text: "no heartbeat".into(),
                    });
                    let _ = Box::pin(self.write(&kick, 0)).await;
                    Err(End::Close(ErrorCode::Ok, "idle timeout"))
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn on_command(&mut self, cmd: Option<SessionCmd>) -> Result<(), End> {
        match cmd {
            Some(SessionCmd::Push(p)) => self.push(p).await,
            Some(SessionCmd::Kick { reason, text }) => {
                metrics::counter!("tern_kickouts_total", "reason" => reason.as_str_name())
                    .increment(1);
                self.write(
                    &Frame::Kickout(pb::Kickout {
                        reason: reason as i32,
                        text,
                    }),
                    0,
                )
                .await?;
                Err(End::Close(ErrorCode::Ok, "kicked out"))
            }
            None => Err(End::Close(ErrorCode::Ok, "session queue closed")),
        }
    }

    /// The number of a log (0 = the user's timeline), assigned on first use.
    fn log_number(&mut self, log: Option<&str>) -> u32 {
        let Some(log) = log else { return 0 };
        match self.logs.iter().position(|l| &**l == log) {
            Some(i) => i as u32 + 1,
            None => {
                self.logs.push(Arc::from(log));
                self.logs.len() as u32
            }
        }
    }

    fn push_frame(&self, key: PushKey, entry: &pb::TimelineEntry) -> Frame {
        let log = match key.0 {
            0 => String::new(),
            n => self.logs[n as usize - 1].to_string(),
        };
        Frame::Push(pb::Push {
            entry: Some(entry.clone()),
            log,
        })
    }

    async fn push(&mut self, p: Push) -> Result<(), End> {
        let key: PushKey = (self.log_number(p.log.as_deref()), p.entry.seq);
        if self.push_qos.is_pending(&key) {
            return Ok(());
        }
        if self
            .push_qos
            .try_send(key, Instant::now().into_std())
            .is_err()
        {
            // Window full: the client sees the gap at the next push and syncs it.
            metrics::counter!("tern_pushes_skipped_total").increment(1);
            return Ok(());
        }
        metrics::counter!("tern_pushes_total").increment(1);
        let frame = self.push_frame(key, &p.entry);
        self.pending_pushes.insert(key, p.entry);
        self.write(&frame, 0).await
    }

    async fn on_qos_timer(&mut self) -> Result<(), End> {
        self.push_qos.handle_timeout(Instant::now().into_std());
        while let Some(ev) = self.push_qos.poll_event() {
            match ev {
                SenderEvent::Retransmit(key) => {
                    if let Some(entry) = self.pending_pushes.get(&key).cloned() {
                        metrics::counter!("tern_push_retransmissions_total").increment(1);
                        let frame = self.push_frame(key, &entry);
                        self.write(&frame, FLAG_RETRANSMIT).await?;
                    }
                }
                SenderEvent::Failed {
                    key, transmissions, ..
                } => {
                    self.pending_pushes.remove(&key);
                    metrics::counter!("tern_push_failed_total").increment(1);
                    tracing::warn!(user = %self.user, log = key.0, seq = key.1, transmissions, "push never acknowledged; left for sync");
                }
            }
        }
        Ok(())
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<(), End> {
        if !self.bucket.take(Instant::now()) {
            metrics::counter!("tern_rate_limited_total").increment(1);
            if self.bucket.refused > self.shared.config.rate_burst {
                tracing::warn!(user = %self.user, session = self.id, "flood: closing session");
                let f = Frame::error(ErrorCode::RateLimited, "too many frames", 0);
                self.write(&f, 0).await?;
                return Err(End::Close(ErrorCode::RateLimited, "flood"));
            }
            if let Frame::Chat(m) = frame {
                let r = send_result(m.client_msg_id, ErrorCode::RateLimited);
                return self.write(&r, 0).await;
            }
            return Ok(());
        }
        match frame {
            Frame::Chat(m) => self.on_chat(m).await,
            Frame::DeliveryAck(a) => {
                self.on_delivery_ack(a);
                Ok(())
            }
            Frame::Heartbeat(_) => {
                let reply = Frame::HeartbeatReply(pb::HeartbeatReply {
                    observed_addr: self.conn.remote_address().to_string(),
                    server_time_ms: tern_protocol::unix_ms(),
                });
                self.write(&reply, 0).await
            }
            Frame::SyncRequest(r) => {
                self.on_sync(r);
                Ok(())
            }
            Frame::SummariesRequest(r) => {
                self.on_summaries(r);
                Ok(())
            }
            Frame::LogsRequest(r) => {
                self.on_logs(r);
                Ok(())
            }
            Frame::MarkRead(r) => {
                self.on_mark_read(r);
                Ok(())
            }
            Frame::RecallRequest(r) => {
                self.on_recall(r);
                Ok(())
            }
            Frame::PushTokenRequest(r) => {
                self.on_push_token(r);
                Ok(())
            }
            Frame::HistoryRequest(r) => {
                self.on_history(r);
                Ok(())
            }
            Frame::GroupRequest(r) => {
                self.on_group(r);
                Ok(())
            }
            Frame::Logout(_) => Err(End::Close(ErrorCode::Ok, "logout")),
            other => {
                tracing::info!(user = %self.user, kind = ?other.kind(), "unexpected frame");
                metrics::counter!("tern_frames_rejected_total", "code" => "UNEXPECTED_FRAME")
                    .increment(1);
                let f = Frame::error(
                    ErrorCode::UnexpectedFrame,
                    format!("{:?} is not valid here", other.kind()),
                    0,
                );
                self.write(&f, 0).await?;
                Err(End::Close(ErrorCode::UnexpectedFrame, "unexpected frame"))
            }
        }
    }

    async fn on_chat(&mut self, m: pb::ChatMessage) -> Result<(), End> {
        metrics::counter!("tern_messages_in_total").increment(1);
        let cfg = &self.shared.config;
        let refuse = |code| Some(send_result(m.client_msg_id.clone(), code));
        let kind = pb::ConversationKind::try_from(m.kind).ok();
        let id = ClientMsgId::from_slice(&m.client_msg_id);
        let rejection = if id.is_err() {
            refuse(ErrorCode::InvalidArgument)
        } else if !m.sender.is_empty() && m.sender != self.user {
            refuse(ErrorCode::NotAllowed)
        } else if m.body.len() > cfg.max_body_bytes as usize {
            refuse(ErrorCode::MessageTooLarge)
        } else if kind == Some(pb::ConversationKind::System) {
            // SYSTEM is for the HTTP API only.
            refuse(ErrorCode::NotAllowed)
        } else if kind.is_none() {
            refuse(ErrorCode::InvalidArgument)
        } else if !is_valid_user_id(&m.recipient) {
            refuse(ErrorCode::RecipientNotFound)
        } else {
            None
        };
        if let Some(frame) = rejection {
            metrics::counter!("tern_messages_rejected_total").increment(1);
            return self.write(&frame, 0).await;
        }
        let to_service = kind == Some(pb::ConversationKind::Direct)
            && cfg.service_accounts.contains(&m.recipient);
        let queued = self.shared.store.store_message(NewMessage {
            sender: self.user.clone(),
            client_msg_id: id.expect("checked above"),
            to_service,
            from_backend: false,
            recipient: m.recipient,
            kind: kind.expect("checked above"),
            content_type: m.content_type,
            body: m.body,
            client_ts_ms: m.client_ts_ms,
            require_known_recipient: cfg.require_known_recipient,
        });
        let shared = self.shared.clone();
        let session = self.id;
        let client_msg_id = m.client_msg_id;
        let user = self.user.clone();
        self.tasks.push(Box::pin(async move {
            Some(match queued.await {
                Ok(stored) => {
                    if stored.duplicate {
                        metrics::counter!("tern_messages_duplicate_total").increment(1);
                    } else {
                        metrics::counter!("tern_messages_stored_total").increment(1);
                        if to_service {
                            shared.webhooks.kick();
                        }
                        crate::webhook::Webhooks::message_stored(&shared, &user, &stored.fanout);
                    }
                    shared.fan_out(stored.fanout, Some(session));
                    Frame::SendResult(pb::SendResult {
                        client_msg_id,
                        code: ErrorCode::Ok as i32,
                        server_msg_id: stored.server_msg_id,
                        seq: stored.sender_seq,
                        server_ts_ms: stored.server_ts_ms,
                        log_seq: stored.log_seq,
                    })
                }
                Err(e) => send_result(client_msg_id, store_failure(e).0),
            })
        }));
        Ok(())
    }

    fn on_delivery_ack(&mut self, a: pb::DeliveryAck) {
        let now = Instant::now().into_std();
        let log = (!a.log.is_empty()).then_some(a.log.as_str());
        // Only logs this session pushed have pending entries: an ACK naming any other
        // log settles nothing (and must not grow the session's log table).
        let number = match log {
            None => 0,
            Some(l) => match self.logs.iter().position(|x| &**x == l) {
                Some(i) => i as u32 + 1,
                None => return,
            },
        };
        let acked: Vec<PushKey> = self
            .push_qos
            .pending()
            .filter(|(l, s)| *l == number && (*s <= a.cumulative_seq || a.seqs.contains(s)))
            .copied()
            .collect();
        for key in acked {
            if let Some(ack) = self.push_qos.on_ack(key, now) {
                metrics::histogram!("tern_push_ack_seconds").record(ack.elapsed.as_secs_f64());
            }
            self.pending_pushes.remove(&key);
        }
        // A group log's ACK only settles the pushes: no cursor or receipts on the server.
        if a.cumulative_seq == 0 || log.is_some() {
            return;
        }
        let shared = self.shared.clone();
        let (user, device, seq) = (self.user.clone(), self.device.clone(), a.cumulative_seq);
        // Spawned, not tied to the session: the cursor and receipts must advance even if
        // the connection drops right after the ACK.
        tokio::spawn(async move {
            match shared.store.ack_delivered(&user, &device, seq).await {
                Ok(fanout) => shared.fan_out(fanout, None),
                // Busy (counted like every refused write): the next ACK's cumulative
                // seq covers this one.
                Err(e @ StoreError::Busy) => {
                    store_failure(e);
                }
                Err(e) => tracing::error!(%user, error = %e, "delivery ack not recorded"),
            }
        });
    }

    /// Runs a request in the background and answers with an [`pb::OpResult`]; on
    /// success the new timeline entries are pushed to the user's sessions (including
    /// this one: a read mark or recall is applied on the device that made it the same
    /// way as on the others).
    fn op(
        &mut self,
        request_id: u64,
        what: &'static str,
        run: impl std::future::Future<Output = Result<Vec<Fanout>, StoreError>> + Send + 'static,
    ) {
        let shared = self.shared.clone();
        self.tasks.push(Box::pin(async move {
            let (code, message) = match run.await {
                Ok(fanout) => {
                    shared.fan_out(fanout, None);
                    (ErrorCode::Ok, String::new())
                }
                Err(e) => {
                    let (code, message) = store_failure(e);
                    tracing::debug!(what, code = code_name(code), %message, "request refused");
                    (code, message)
                }
            };
            Some(Frame::OpResult(pb::OpResult {
                request_id,
                code: code as i32,
                message,
            }))
        }));
    }

    fn on_mark_read(&mut self, r: pb::MarkRead) {
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        let max = self.shared.config.group_receipts_max_members;
        let kind = pb::ConversationKind::try_from(r.kind).unwrap_or(pb::ConversationKind::Direct);
        self.op(r.request_id, "mark_read", async move {
            store
                .mark_read(&user, kind, &r.conversation, r.up_to_seq, max)
                .await
        });
    }

    fn on_recall(&mut self, r: pb::RecallRequest) {
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        let window = self.shared.config.recall_window.as_millis() as u64;
        self.op(r.request_id, "recall", async move {
            store.recall(&user, r.server_msg_id, window).await
        });
    }

    fn on_push_token(&mut self, r: pb::PushTokenRequest) {
        let (store, user, device) = (
            self.shared.store.clone(),
            self.user.clone(),
            self.device.clone(),
        );
        let platform = self.platform;
        self.op(r.request_id, "push_token", async move {
            if r.provider.len() > 32 || r.token.len() > 4096 {
                return Err(StoreError::Invalid("push token or provider too long"));
            }
            store
                .set_push_token(&user, &device, platform, &r.provider, &r.token)
                .await
                .map(|_| vec![])
        });
    }

    fn on_history(&mut self, r: pb::HistoryRequest) {
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        let limit = if r.limit == 0 {
            DEFAULT_SYNC_PAGE
        } else {
            r.limit.min(MAX_SYNC_PAGE)
        };
        let kind = pb::ConversationKind::try_from(r.kind).unwrap_or(pb::ConversationKind::Direct);
        self.tasks.push(Box::pin(async move {
            metrics::counter!("tern_history_pages_total").increment(1);
            Some(
                match store
                    .history(&user, kind, &r.conversation, r.before_seq, limit)
                    .await
                {
                    Ok((entries, more)) => Frame::HistoryResponse(pb::HistoryResponse {
                        request_id: r.request_id,
                        entries,
                        more,
                        code: ErrorCode::Ok as i32,
                    }),
                    Err(e) => Frame::HistoryResponse(pb::HistoryResponse {
                        request_id: r.request_id,
                        code: store_failure(e).0 as i32,
                        ..Default::default()
                    }),
                },
            )
        }));
    }

    fn on_group(&mut self, r: pb::GroupRequest) {
        let shared = self.shared.clone();
        let user = self.user.clone();
        self.tasks.push(Box::pin(async move {
            let request_id = r.request_id;
            let outcome = crate::groups::handle(&shared, Some(&user), r.op).await;
            Some(Frame::GroupResponse(match outcome {
                Ok(groups) => pb::GroupResponse {
                    request_id,
                    code: ErrorCode::Ok as i32,
                    message: String::new(),
                    groups,
                },
                Err(e) => {
                    let (code, message) = store_failure(e);
                    pb::GroupResponse {
                        request_id,
                        code: code as i32,
                        message,
                        groups: vec![],
                    }
                }
            }))
        }));
    }

    fn on_sync(&mut self, r: pb::SyncRequest) {
        let limit = if r.limit == 0 {
            DEFAULT_SYNC_PAGE
        } else {
            r.limit.min(MAX_SYNC_PAGE)
        };
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        self.tasks.push(Box::pin(async move {
            metrics::counter!("tern_sync_pages_total").increment(1);
            // The user's timeline, or (members only) a large group's log.
            let owner = if r.log.is_empty() {
                user.clone()
            } else {
                match store.log_member(&user, &r.log).await {
                    Ok(true) => crate::store::log_key(&r.log),
                    Ok(false) => {
                        return Some(Frame::error(
                            ErrorCode::NotAllowed,
                            "not a member of this large group",
                            r.request_id,
                        ));
                    }
                    Err(e) => {
                        return Some(Frame::error(
                            store_failure(e).0,
                            "sync failed",
                            r.request_id,
                        ));
                    }
                }
            };
            Some(
                match store
                    .timeline(&owner, r.after_seq, r.until_seq, limit)
                    .await
                {
                    Ok(page) => Frame::SyncResponse(pb::SyncResponse {
                        request_id: r.request_id,
                        entries: page.entries,
                        more: page.more,
                        head_seq: page.head_seq,
                        log: r.log,
                    }),
                    Err(e) => Frame::error(store_failure(e).0, "sync failed", r.request_id),
                },
            )
        }));
    }

    fn on_logs(&mut self, r: pb::LogsRequest) {
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        self.tasks.push(Box::pin(async move {
            Some(match store.logs(&user, 5).await {
                Ok(groups) => Frame::Logs(pb::Logs {
                    request_id: r.request_id,
                    groups,
                }),
                Err(e) => Frame::error(store_failure(e).0, "logs failed", r.request_id),
            })
        }));
    }

    fn on_summaries(&mut self, r: pb::SummariesRequest) {
        let limit = if r.limit == 0 {
            50
        } else {
            r.limit.min(MAX_SUMMARIES)
        };
        let last = r.last_messages.min(MAX_SUMMARY_MESSAGES);
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        self.tasks.push(Box::pin(async move {
            Some(match store.summaries(&user, last, limit).await {
                Ok(page) => Frame::Summaries(pb::Summaries {
                    request_id: r.request_id,
                    conversations: page.conversations,
                    head_seq: page.head_seq,
                    more: page.more,
                }),
                Err(e) => Frame::error(store_failure(e).0, "summaries failed", r.request_id),
            })
        }));
    }
}

/// What a session's push QoS tracks: (log number, seq). Log 0 is the user's own
/// timeline; large groups' logs get numbers 1, 2, ... per session ([`Session::logs`]).
type PushKey = (u32, u64);

fn send_result(client_msg_id: bytes::Bytes, code: ErrorCode) -> Frame {
    Frame::SendResult(pb::SendResult {
        client_msg_id,
        code: code as i32,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_lt("1.9.3", "1.10.0"));
        assert!(!version_lt("1.10.0", "1.10"));
        assert!(version_lt("", "0.1"));
        assert!(!version_lt("2", "1.99.99"));
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..7).filter(|_| b.take(t0)).count(), 5);
        assert_eq!(b.refused, 2);
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "one token after 100 ms at 10/s"
        );
        assert!(!b.take(t0 + Duration::from_millis(100)));
        assert_eq!(
            (0..20)
                .filter(|_| b.take(t0 + Duration::from_secs(60)))
                .count(),
            5,
            "capped at burst"
        );
    }
}
