//! # tern-client
//!
//! The client core every app embeds (directly from Rust, or through the `ffi` bindings
//! from Kotlin, Swift and Python). The app never sees a socket: it calls
//! [`Client::login`], [`Client::send_text`], [`Client::conversations`],
//! [`Client::messages`], and receives [`ClientEvent`]s.
//!
//! Shape (after matrix-rust-sdk): the client **owns its tokio runtime** and its
//! **SQLite store**, so foreign runtimes (Android main thread, Swift, Python) only ever
//! call plain methods; [`Client::shutdown`] stops every task and the event thread before
//! it returns, so no callback can reach a foreign runtime that is exiting.
//!
//! * [`store`]: the local database (messages, persisted outbox, conversations, cursor);
//! * [`sync`]: the sans-IO sync machine: outbox and its retransmission, deferred sends,
//!   read marks, summaries, sync pages, gap detection, large-group log cursors;
//! * `connection`: the connection manager that drives it: connect, log in, smart
//!   heartbeat, reconnect with backoff;
//! * [`types`]: messages, statuses, conversations, connection states, events.
//!
//! Methods are synchronous and quick (a local SQLite write at most): a send is durable
//! in the outbox when [`Client::send`] returns, and the network work happens on the
//! client's own runtime.

#[cfg(feature = "uniffi")]
uniffi::setup_scaffolding!();

mod connection;
mod doctor;
mod requests;
pub mod servers;
pub mod store;
pub mod sync;
mod transport;
pub mod types;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tern_protocol::backoff::BackoffConfig;
use tern_protocol::heartbeat::HeartbeatConfig;
use tern_protocol::qos::QosConfig;
use tern_protocol::{ClientMsgId, is_valid_user_id, unix_ms};
use tokio::sync::{mpsc, watch};

pub use doctor::{CheckStatus, DoctorCheck};
pub use store::DbError;
pub use tern_protocol::pb::Platform;
pub use types::{
    ClientEvent, ConnectionState, Conversation, ConversationKind, Diagnostics, EventListener,
    GroupInfo, HistoryPage, Message, MessageStatus,
};

use crate::connection::Command;
use crate::store::Db;

/// How to reach the server and where to keep data.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of the server's QUIC endpoint; for a cluster several, comma-separated
    /// (`a.example.com:7443,b.example.com:7443`), and a host name may resolve to several
    /// addresses. The client keeps to the last node that worked, tries the others in
    /// turn when it fails, and moves at once when a node says it is going away.
    pub server: String,
    /// TLS server name; default: the host part of the `server` entry being tried
    /// (`localhost` for IPs).
    pub server_name: Option<String>,
    /// PEM certificate(s) to trust (e.g. the dev certificate); `None` trusts the
    /// public web PKI roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Where the local database lives (one subdirectory per user).
    pub data_dir: PathBuf,
    /// Stable id of this install.
    pub device_id: String,
    /// Platform, for the server's kickout policy.
    pub platform: Platform,
    /// App/SDK version sent at login.
    pub client_version: String,
    /// Network label at start (the app reports changes with `network_changed`).
    pub network_label: String,
    /// Send tracking: the window, the retransmission schedule and the give-up time.
    /// Its `retransmit` follows [`ClientConfig::uplink`]: on with datagrams, off on the
    /// stream (QUIC repairs the stream; the engine then keeps the window, reports give-up
    /// and resends the outbox on every new connection).
    pub qos: QosConfig,
    /// How sends travel to the server (see [`Uplink`]).
    pub uplink: Uplink,
    /// On a path QUIC measures lossy (10 % or more), send each send datagram twice, the
    /// copy a quarter RTT later (`tern_protocol::redundancy`): the uplink needs two
    /// lossy trips (the send and its answer) where a push needs one. Costs bytes only
    /// while the path is lossy. Default on.
    pub loss_copies: bool,
    /// QUIC's congestion controller for what this client sends: BBR by default (random
    /// loss on a weak path is not congestion), CUBIC one setting away.
    pub congestion: tern_protocol::io::Congestion,
    /// Which transports the client may use (see [`TransportMode`]).
    pub transport: TransportMode,
    /// `host:port` of the server's TLS-over-TCP listener; default: `server` (the same
    /// host and port, over TCP).
    pub tcp_server: Option<String>,
    /// How long QUIC gets to log in before TLS over TCP is tried beside it
    /// ([`TransportMode::Auto`]).
    pub tcp_head_start: Duration,
    /// While on TCP, how often QUIC is tried again in the background; the session moves
    /// back to QUIC when it works.
    pub quic_reprobe: Duration,
    /// `host:port` of an HTTP proxy (`CONNECT`) for the TCP and WebSocket transports,
    /// on networks that reach the web only through one; QUIC does not use it.
    pub http_proxy: Option<String>,
    /// `host:port` of the server's WebSocket-over-TLS listener
    /// ([`TransportMode::WebSocket`]); default: `server`'s host, port + 1.
    pub ws_server: Option<String>,
    /// Smart heartbeat policy.
    pub heartbeat: HeartbeatConfig,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// How long a seq gap may stay open (reordering) before it is pulled.
    pub gap_wait: Duration,
    /// Sync page size.
    pub sync_page: u32,
    /// On a fresh install, download the whole timeline (`true`, the default) or only
    /// summaries and what arrives from now on, paging older history from the server
    /// when the app asks for it ([`Client::load_history`]). `false` suits accounts with
    /// a long history on slow networks.
    pub full_history_sync: bool,
}

impl ClientConfig {
    /// Defaults for everything but the server, data directory and device.
    pub fn new(
        server: impl Into<String>,
        data_dir: impl Into<PathBuf>,
        device_id: impl Into<String>,
    ) -> Self {
        ClientConfig {
            server: server.into(),
            server_name: None,
            ca_pem: None,
            data_dir: data_dir.into(),
            device_id: device_id.into(),
            platform: Platform::Desktop,
            client_version: env!("CARGO_PKG_VERSION").into(),
            network_label: "default".into(),
            qos: QosConfig::uplink(),
            uplink: Uplink::Datagram,
            loss_copies: true,
            congestion: tern_protocol::io::Congestion::default(),
            transport: TransportMode::Auto,
            tcp_server: None,
            tcp_head_start: Duration::from_millis(300),
            quic_reprobe: Duration::from_secs(300),
            ws_server: None,
            http_proxy: None,
            heartbeat: HeartbeatConfig::default(),
            backoff: BackoffConfig::default(),
            gap_wait: Duration::from_millis(300),
            sync_page: 200,
            full_history_sync: true,
        }
    }
}

/// How a client's sends travel to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Uplink {
    /// In QUIC datagrams when they fit (the stream for larger ones), retransmitted by
    /// the client's own QoS engine on an RTT-based timer; the server puts them back in
    /// the device's send order. A lost packet delays only the sends it carried
    /// (measured in docs/bench/analysis.md, "The uplink under loss").
    #[default]
    Datagram,
    /// On the ordered session stream: QUIC repairs losses, and a lost packet holds back
    /// every send behind it.
    Stream,
}

/// Which transports a client may connect with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportMode {
    /// QUIC first; if it has not logged in within
    /// [`ClientConfig::tcp_head_start`], TLS over TCP beside it, and the first to log
    /// in wins. The transport that worked on a network label is tried first next time;
    /// while on TCP, QUIC is tried again every [`ClientConfig::quic_reprobe`].
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
    /// WebSocket over TLS only (binary messages carry the frames): for networks that
    /// pass nothing but HTTPS.
    WebSocket,
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Call `login` first.
    #[error("not logged in")]
    NotLoggedIn,
    /// `login` was already called (call `logout` first).
    #[error("already logged in")]
    AlreadyLoggedIn,
    /// An argument is invalid (says which).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The body is larger than the server accepts.
    #[error("message of {size} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Body size.
        size: usize,
        /// Server limit.
        max: u32,
    },
    /// The local database failed.
    #[error(transparent)]
    Database(#[from] DbError),
    /// The client was shut down.
    #[error("client is shut down")]
    ShutDown,
    /// No such message (or not in a state that allows this).
    #[error("no such message")]
    NotFound,
    /// The runtime could not be started.
    #[error("cannot start runtime: {0}")]
    Runtime(String),
    /// This call needs a live connection to the server.
    #[error("not connected to the server")]
    NotConnected,
    /// The server refused the request (`code` is the wire error code name, e.g.
    /// `NOT_ALLOWED`, `GROUP_NOT_FOUND`, `RECALL_EXPIRED`).
    #[error("server refused: {code}: {message}")]
    Refused {
        /// Error code name.
        code: String,
        /// Detail.
        message: String,
    },
    /// The server did not answer in time.
    #[error("the server did not answer in time")]
    Timeout,
}

pub(crate) struct Inner {
    config: ClientConfig,
    db: Mutex<Option<Db>>,
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    events: Mutex<Option<std::sync::mpsc::Sender<ClientEvent>>>,
    listener: RwLock<Option<Arc<dyn EventListener>>>,
    state: watch::Sender<ConnectionState>,
    max_body: AtomicU32,
    diagnostics: Mutex<Diagnostics>,
    /// The server addresses and which to try next.
    servers: servers::Servers,
}

impl Inner {
    pub(crate) fn emit(&self, event: ClientEvent) {
        if let Some(tx) = self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(event);
        }
    }

    /// Records why the server's side of the protocol failed (see
    /// [`Diagnostics::last_error`]).
    pub(crate) fn set_last_error(&self, why: String) {
        self.diagnostics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(why);
    }

    pub(crate) fn set_state(&self, state: ConnectionState) {
        if *self.state.borrow() != state {
            tracing::debug!(?state, "connection state");
            self.state.send_replace(state.clone());
            self.emit(ClientEvent::ConnectionStateChanged(state));
        }
    }

    /// Runs `f` on the open store.
    pub(crate) fn with_db<T>(
        &self,
        f: impl FnOnce(&mut Db) -> Result<T, DbError>,
    ) -> Result<T, ClientError> {
        let mut guard = self.db.lock().unwrap_or_else(|p| p.into_inner());
        let db = guard.as_mut().ok_or(ClientError::NotLoggedIn)?;
        Ok(f(db)?)
    }

    fn command(&self, cmd: Command) {
        if let Some(tx) = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = tx.send(cmd);
        }
    }

    /// Sends a final command and closes the command channel (a later `login` opens a new one).
    fn last_command(&self, cmd: Command) {
        if let Some(tx) = self
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = tx.send(cmd);
        }
    }

    pub(crate) fn emit_conversation(&self, kind: ConversationKind, id: &str) {
        if let Ok(Some(c)) = self.with_db(|db| db.conversation(kind, id)) {
            self.emit(ClientEvent::ConversationUpdated(c));
        }
    }
}

/// A Tern client: one user on one device.
pub struct Client {
    inner: Arc<Inner>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    dispatcher: Mutex<Option<std::thread::JoinHandle<()>>>,
    tasks_left: std::sync::atomic::AtomicUsize,
}

impl Client {
    /// Creates a client (no network activity until [`login`](Self::login)).
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        if config.device_id.is_empty() || config.device_id.len() > 128 {
            return Err(ClientError::InvalidArgument(
                "device_id must be 1 to 128 bytes".into(),
            ));
        }
        if servers::entries(&config.server).is_empty() {
            return Err(ClientError::InvalidArgument(
                "server address is empty".into(),
            ));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tern-client")
            .enable_all()
            .build()
            .map_err(|e| ClientError::Runtime(e.to_string()))?;
        let (events_tx, events_rx) = std::sync::mpsc::channel::<ClientEvent>();
        let (state, _) = watch::channel(ConnectionState::Disconnected);
        let inner = Arc::new(Inner {
            servers: servers::Servers::new(&config.server),
            config,
            db: Mutex::new(None),
            commands: Mutex::new(None),
            events: Mutex::new(Some(events_tx)),
            listener: RwLock::new(None),
            state,
            max_body: AtomicU32::new(64 * 1024),
            diagnostics: Mutex::new(Diagnostics::default()),
        });
        let weak = Arc::downgrade(&inner);
        let dispatcher = std::thread::Builder::new()
            .name("tern-events".into())
            .spawn(move || {
                while let Ok(event) = events_rx.recv() {
                    let Some(inner) = weak.upgrade() else { break };
                    let listener = inner
                        .listener
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    drop(inner);
                    if let Some(l) = listener {
                        l.on_event(event);
                    }
                }
            })
            .map_err(|e| ClientError::Runtime(e.to_string()))?;
        Ok(Client {
            inner,
            runtime: Mutex::new(Some(runtime)),
            dispatcher: Mutex::new(Some(dispatcher)),
            tasks_left: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Sets the one event listener (replacing any previous one).
    pub fn set_listener(&self, listener: Arc<dyn EventListener>) {
        *self
            .inner
            .listener
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(listener);
    }

    /// Opens `user`'s local store and starts connecting. Progress arrives as
    /// [`ClientEvent::ConnectionStateChanged`]; see also [`wait_for_state`](Self::wait_for_state).
    pub fn login(&self, user: &str, token: &str) -> Result<(), ClientError> {
        if !is_valid_user_id(user) {
            return Err(ClientError::InvalidArgument(format!(
                "invalid user id {user:?}"
            )));
        }
        let rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        let rt = rt.as_ref().ok_or(ClientError::ShutDown)?;
        let mut commands = self
            .inner
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if commands.is_some() {
            return Err(ClientError::AlreadyLoggedIn);
        }
        let db = Db::open(&self.inner.config.data_dir, user)?;
        *self.inner.db.lock().unwrap_or_else(|p| p.into_inner()) = Some(db);
        let (tx, rx) = mpsc::unbounded_channel();
        *commands = Some(tx);
        drop(commands);
        rt.spawn(connection::run(
            self.inner.clone(),
            user.to_owned(),
            token.to_owned(),
            rx,
        ));
        Ok(())
    }

    /// Ends the session on purpose (the server stops pushing) and closes the store.
    pub fn logout(&self) {
        self.inner.last_command(Command::Logout);
        *self.inner.db.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.set_state(ConnectionState::Disconnected);
    }

    /// Stops every task and the event thread, then returns. Safe to call from any
    /// thread (including inside another tokio runtime) and more than once. Messages
    /// still in the outbox are sent after the next `login`.
    pub fn shutdown(&self) {
        self.inner.last_command(Command::Shutdown);
        if let Some(rt) = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            // Let the tasks finish on their own (they close the connection politely),
            // then stop the runtime. Dropping a runtime inside another runtime's
            // context panics; a plain thread is always allowed to.
            let left = std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(1);
                while rt.metrics().num_alive_tasks() > 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let left = rt.metrics().num_alive_tasks();
                rt.shutdown_timeout(Duration::from_secs(1));
                left
            })
            .join()
            .unwrap_or(usize::MAX);
            self.tasks_left.store(left, Ordering::Relaxed);
        }
        *self.inner.db.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.inner
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(d) = self
            .dispatcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            if d.thread().id() != std::thread::current().id() {
                let _ = d.join();
            }
        }
    }

    /// Tasks that had not finished on their own when `shutdown` stopped the runtime
    /// (0 after a clean shutdown). For tests and diagnostics.
    pub fn tasks_left_at_shutdown(&self) -> usize {
        self.tasks_left.load(Ordering::Relaxed)
    }

    /// What the connection machinery currently believes (heartbeat interval, RTT, ...).
    pub fn diagnostics(&self) -> Diagnostics {
        self.inner
            .diagnostics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current connection state.
    pub fn connection_state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// Waits (from any async runtime) until the state satisfies `pred`, or `timeout`.
    /// Returns the state reached, or `None` on timeout.
    pub async fn wait_for_state(
        &self,
        timeout: Duration,
        pred: impl Fn(&ConnectionState) -> bool,
    ) -> Option<ConnectionState> {
        let mut rx = self.inner.state.subscribe();
        let wait = async {
            loop {
                let s = rx.borrow_and_update().clone();
                if pred(&s) {
                    return Some(s);
                }
                if rx.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }

    /// Sends a UTF-8 text to user `to`. Returns at once with the stored message
    /// (status `Pending`); status changes arrive as events.
    pub fn send_text(&self, to: &str, text: &str) -> Result<Message, ClientError> {
        self.send(to, 0, text.as_bytes())
    }

    /// Sends `body` of the app-defined `content_type` to user `to`.
    pub fn send(&self, to: &str, content_type: u32, body: &[u8]) -> Result<Message, ClientError> {
        self.send_to(ConversationKind::Direct, to, content_type, body)
    }

    /// Sends a UTF-8 text into group `group` (the server checks membership).
    pub fn send_group_text(&self, group: &str, text: &str) -> Result<Message, ClientError> {
        self.send_to(ConversationKind::Group, group, 0, text.as_bytes())
    }

    /// Sends `body` to a user (`Direct`) or a group (`Group`).
    pub fn send_to(
        &self,
        kind: ConversationKind,
        to: &str,
        content_type: u32,
        body: &[u8],
    ) -> Result<Message, ClientError> {
        if kind == ConversationKind::System {
            return Err(ClientError::InvalidArgument(
                "system messages come from the HTTP API".into(),
            ));
        }
        if !is_valid_user_id(to) {
            return Err(ClientError::InvalidArgument(format!(
                "invalid recipient {to:?}"
            )));
        }
        let max = self.inner.max_body.load(Ordering::Relaxed);
        if body.len() > max as usize {
            return Err(ClientError::MessageTooLarge {
                size: body.len(),
                max,
            });
        }
        let now = unix_ms();
        let id = ClientMsgId::generate(now, &mut rand::rng());
        let message = self
            .inner
            .with_db(|db| db.enqueue(id, to, kind, content_type, body, now))?;
        self.inner.emit_conversation(kind, to);
        self.inner.command(Command::Flush);
        Ok(message)
    }

    /// Puts a failed message back in the outbox (same id: never a duplicate).
    pub fn retry(&self, local_id: i64) -> Result<Message, ClientError> {
        let m = self
            .inner
            .with_db(|db| db.retry(local_id))?
            .ok_or(ClientError::NotFound)?;
        self.inner.emit(ClientEvent::MessageStatusChanged {
            local_id,
            status: m.status.clone(),
        });
        self.inner.command(Command::Flush);
        Ok(m)
    }

    /// Conversations, most recent activity first, with unread counts.
    pub fn conversations(&self) -> Result<Vec<Conversation>, ClientError> {
        self.inner.with_db(|db| db.conversations())
    }

    /// Messages of a conversation, newest first; pass the oldest `local_id` seen as
    /// `before` to page backwards.
    pub fn messages(
        &self,
        kind: ConversationKind,
        conversation: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>, ClientError> {
        self.inner
            .with_db(|db| db.messages(kind, conversation, before, limit))
    }

    /// Messages waiting in the outbox (not yet acknowledged by the server), in send order.
    pub fn outbox(&self) -> Result<Vec<Message>, ClientError> {
        self.inner.with_db(|db| db.outbox(u32::MAX))
    }

    /// One message by local id.
    pub fn message(&self, local_id: i64) -> Result<Option<Message>, ClientError> {
        self.inner.with_db(|db| db.message(local_id))
    }

    /// Marks a conversation read up to its newest message: the unread count drops to
    /// zero here at once, and the mark (queued durably, sent when connected) becomes
    /// an event in the user's timeline that every other device applies. The senders
    /// see "read" (1:1) or a read count (small groups).
    pub fn mark_read(&self, kind: ConversationKind, conversation: &str) -> Result<(), ClientError> {
        if self
            .inner
            .with_db(|db| db.mark_read(kind, conversation))?
            .is_some()
        {
            self.inner.emit_conversation(kind, conversation);
            self.inner.command(Command::SendReads);
        }
        Ok(())
    }

    /// Read marks not yet confirmed by the server (they are sent when connected and
    /// survive restarts; a CLI or a test can wait for 0 before exiting).
    pub fn unsent_read_marks(&self) -> Result<usize, ClientError> {
        Ok(self.inner.with_db(|db| db.pending_reads())?.len())
    }

    /// Total unread messages over all conversations (the app badge).
    pub fn total_unread(&self) -> Result<u64, ClientError> {
        self.inner.with_db(|db| db.total_unread())
    }

    /// A group's name as last seen in a group event (no network).
    pub fn group_name(&self, group: &str) -> Result<Option<String>, ClientError> {
        self.inner.with_db(|db| db.group_name(group))
    }

    /// Highest contiguous inbox seq stored locally.
    pub fn sync_cursor(&self) -> Result<u64, ClientError> {
        self.inner.with_db(|db| db.cursor())
    }

    /// The app moved to another network (e.g. Wi-Fi to cellular, labelled by the app).
    /// The connection migrates to a new socket at once, or reconnects at once.
    pub fn network_changed(&self, label: &str) {
        self.inner
            .command(Command::NetworkChanged(label.to_owned()));
    }

    /// The app moved to the foreground or background (heartbeat policy).
    pub fn set_foreground(&self, foreground: bool) {
        self.inner.command(Command::SetForeground(foreground));
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}
