//! # tern-ffi
//!
//! uniffi bindings over [`tern_client`] for Kotlin (Android), Swift (iOS) and Python.
//!
//! Thin by design: every function forwards to [`tern_client::Client`], and the types
//! below mirror the client core's one to one (uniffi needs its own derives on them). No
//! behaviour lives here — if a binding needs something new, it goes into the client
//! core first, where the Rust tests cover it.
//!
//! Threading: every method may be called from any thread. The listener is called on
//! the client's event thread (never on a network task); marshal to your UI thread.
//! Call `shutdown()` before the process or the foreign runtime exits: it returns only
//! when no further callback can arrive.

use std::sync::Arc;

use tern_client as core;

uniffi::setup_scaffolding!();

/// Kind of device, for the server's one-session-per-slot policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Platform {
    /// Android phone or tablet.
    Android,
    /// iPhone or iPad.
    Ios,
    /// Desktop app.
    Desktop,
    /// Web app.
    Web,
}

// Types that cross the boundary unchanged: uniffi derives on the client core's own
// definitions (feature `uniffi` of tern-client), so there is no mirror to keep in step.
pub use tern_client::{ConversationKind, GroupInfo, MessageStatus};

/// A message stored on this device.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Message {
    /// This device's id for the message.
    pub local_id: i64,
    /// Sender-made id (32 hex characters).
    pub client_msg_id: String,
    /// The server's id, once stored there.
    pub server_msg_id: Option<u64>,
    /// The other side of the conversation.
    pub conversation: String,
    /// Conversation kind.
    pub kind: ConversationKind,
    /// Sender user id.
    pub sender: String,
    /// Recipient user or group id.
    pub recipient: String,
    /// 0 = UTF-8 text.
    pub content_type: u32,
    /// Payload.
    pub body: Vec<u8>,
    /// The body as text when it is UTF-8.
    pub text: Option<String>,
    /// Sender's clock (unix ms).
    pub client_ts_ms: u64,
    /// Server's clock (unix ms); defines the order.
    pub server_ts_ms: Option<u64>,
    /// Seq in this user's timeline.
    pub seq: Option<u64>,
    /// Sent by this user.
    pub outgoing: bool,
    /// Delivery status.
    pub status: MessageStatus,
    /// Recalled by its sender (body empty).
    pub recalled: bool,
    /// Outgoing group message: members who have read it.
    pub read_count: u32,
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct HistoryPage {
    /// Messages, newest first.
    pub messages: Vec<Message>,
    /// No older message exists, on this device or the server.
    pub at_beginning: bool,
}

/// A conversation for the list screen.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Conversation {
    /// Peer user, group or system account id.
    pub id: String,
    /// Kind.
    pub kind: ConversationKind,
    /// Unread incoming messages.
    pub unread: u64,
    /// Most recent message stored locally.
    pub last_message: Option<Message>,
    /// Last activity (unix ms).
    pub last_activity_ms: u64,
    /// Highest timeline seq of this conversation.
    pub latest_seq: u64,
}

/// The connection, as the app should show it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Not logged in.
    Disconnected,
    /// Connecting and logging in.
    Connecting,
    /// Logged in.
    Connected,
    /// Lost; retrying after `delay_ms`.
    WaitingToReconnect {
        /// Delay before the next attempt.
        delay_ms: u64,
    },
    /// Signed out by another login or an admin; no reconnect.
    KickedOut {
        /// Reason code name, e.g. `LOGIN_ELSEWHERE`.
        reason: String,
        /// Text to show.
        text: String,
    },
    /// The server refused the login for good.
    LoginFailed {
        /// Error code name, e.g. `TOKEN_EXPIRED`.
        code: String,
        /// Detail.
        detail: String,
    },
}

/// An event for the app.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum TernEvent {
    /// A new message was stored: incoming, or sent from another device of this user
    /// (`outgoing` is true).
    MessageReceived {
        /// The message.
        message: Message,
    },
    /// An outgoing message changed status.
    MessageStatusChanged {
        /// Which message.
        local_id: i64,
        /// The new status.
        status: MessageStatus,
    },
    /// A stored message changed in place (recalled, group read count).
    MessageUpdated {
        /// The message as it is now.
        message: Message,
    },
    /// A conversation's summary changed.
    ConversationUpdated {
        /// The conversation.
        conversation: Conversation,
    },
    /// The connection state changed.
    ConnectionStateChanged {
        /// The new state.
        state: ConnectionState,
    },
    /// Catch-up progress: everything up to `stored` of `head` is local.
    SyncProgress {
        /// Highest contiguous seq stored.
        stored: u64,
        /// Latest seq on the server.
        head: u64,
    },
    /// A session started on another transport: `quic`, `tcp` or `ws`.
    TransportChanged {
        /// The transport now in use.
        transport: String,
    },
}

/// How to reach the server and where to keep data.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientSettings {
    /// `host:port` of the server; for a cluster several, comma-separated (the client
    /// keeps to the node that works and moves on when one fails or goes away).
    pub server: String,
    /// PEM certificate(s) to trust; `None` trusts the public web PKI.
    pub ca_pem: Option<String>,
    /// Directory for the local database (e.g. the app's files dir).
    pub data_dir: String,
    /// Stable id of this install.
    pub device_id: String,
    /// Platform.
    pub platform: Platform,
    /// App version, sent at login.
    pub client_version: String,
    /// Transport: `"auto"` (QUIC first, TLS over TCP where UDP is blocked; the
    /// default), `"quic"`, `"tcp"` or `"ws"` (WebSocket over TLS).
    #[uniffi(default = None)]
    pub transport: Option<String>,
    /// `host:port` of the server's TLS-over-TCP listener; default: `server`.
    #[uniffi(default = None)]
    pub tcp_server: Option<String>,
    /// `host:port` of the server's WebSocket listener; default: `server`'s port + 1.
    #[uniffi(default = None)]
    pub ws_server: Option<String>,
    /// `host:port` of an HTTP proxy (CONNECT) for the TCP and WebSocket transports.
    #[uniffi(default = None)]
    pub http_proxy: Option<String>,
}

/// Errors of client calls.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum TernError {
    /// Call `login` first.
    #[error("not logged in")]
    NotLoggedIn,
    /// Already logged in (call `logout` first).
    #[error("already logged in")]
    AlreadyLoggedIn,
    /// An argument is invalid.
    #[error("invalid argument: {detail}")]
    InvalidArgument {
        /// Which and why.
        detail: String,
    },
    /// The body is larger than the server accepts.
    #[error("message of {size} bytes exceeds the limit of {max}")]
    MessageTooLarge {
        /// Body size.
        size: u64,
        /// Server limit.
        max: u32,
    },
    /// The local database failed.
    #[error("local database error: {detail}")]
    Database {
        /// Detail.
        detail: String,
    },
    /// The client was shut down.
    #[error("client is shut down")]
    ShutDown,
    /// No such message.
    #[error("no such message")]
    NotFound,
    /// The client's runtime could not start.
    #[error("runtime error: {detail}")]
    Runtime {
        /// Detail.
        detail: String,
    },
    /// The call needs a connection to the server.
    #[error("not connected")]
    NotConnected,
    /// The server refused the request.
    #[error("refused: {code}: {detail}")]
    Refused {
        /// Wire error code name, e.g. `NOT_ALLOWED`.
        code: String,
        /// Detail.
        detail: String,
    },
    /// The server did not answer in time.
    #[error("timed out")]
    Timeout,
}

/// Receives events; implement it in Kotlin, Swift or Python.
#[uniffi::export(foreign)]
pub trait TernListener: Send + Sync {
    /// One event, on the client's event thread.
    fn on_event(&self, event: TernEvent);
}

/// A Tern client: one user on one device.
#[derive(uniffi::Object)]
pub struct TernClient {
    client: core::Client,
}

#[uniffi::export]
impl TernClient {
    /// Creates a client; nothing touches the network until `login`.
    #[uniffi::constructor]
    pub fn new(settings: ClientSettings) -> Result<Arc<Self>, TernError> {
        let mut config =
            core::ClientConfig::new(settings.server, settings.data_dir, settings.device_id);
        config.ca_pem = settings.ca_pem.map(String::into_bytes);
        config.platform = settings.platform.into();
        config.client_version = settings.client_version;
        config.transport = match settings.transport.as_deref() {
            None | Some("auto") => core::TransportMode::Auto,
            Some("quic") => core::TransportMode::Quic,
            Some("tcp") => core::TransportMode::Tcp,
            Some("ws") => core::TransportMode::WebSocket,
            Some(other) => {
                return Err(TernError::InvalidArgument {
                    detail: format!("transport must be auto, quic, tcp or ws, not {other:?}"),
                });
            }
        };
        config.tcp_server = settings.tcp_server;
        config.ws_server = settings.ws_server;
        config.http_proxy = settings.http_proxy;
        Ok(Arc::new(TernClient {
            client: core::Client::new(config)?,
        }))
    }

    /// Sets the one event listener.
    pub fn set_listener(&self, listener: Arc<dyn TernListener>) {
        self.client.set_listener(Arc::new(Forward(listener)));
    }

    /// Opens the user's local store and starts connecting.
    pub fn login(&self, user: String, token: String) -> Result<(), TernError> {
        Ok(self.client.login(&user, &token)?)
    }

    /// Ends the session on purpose.
    pub fn logout(&self) {
        self.client.logout();
    }

    /// Stops everything; no callback arrives after this returns. Idempotent.
    pub fn shutdown(&self) {
        self.client.shutdown();
    }

    /// The current connection state.
    pub fn connection_state(&self) -> ConnectionState {
        self.client.connection_state().into()
    }

    /// The transport of the current (or last) session: `"quic"` or `"tcp"`; `None`
    /// before the first session.
    pub fn transport(&self) -> Option<String> {
        self.client.diagnostics().transport
    }

    /// Sends a text; returns the pending message at once.
    pub fn send_text(&self, to: String, text: String) -> Result<Message, TernError> {
        Ok(self.client.send_text(&to, &text)?.into())
    }

    /// Sends an app-defined payload.
    pub fn send(&self, to: String, content_type: u32, body: Vec<u8>) -> Result<Message, TernError> {
        Ok(self.client.send(&to, content_type, &body)?.into())
    }

    /// Resends a failed message (same id, never a duplicate).
    pub fn retry(&self, local_id: i64) -> Result<Message, TernError> {
        Ok(self.client.retry(local_id)?.into())
    }

    /// Conversations, most recent first, with unread counts.
    pub fn conversations(&self) -> Result<Vec<Conversation>, TernError> {
        Ok(self
            .client
            .conversations()?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Messages of a conversation, newest first; pass the oldest `local_id` as `before`
    /// to page back.
    pub fn messages(
        &self,
        kind: ConversationKind,
        conversation: String,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>, TernError> {
        Ok(self
            .client
            .messages(kind, &conversation, before, limit)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Messages not yet stored by the server, in send order.
    pub fn outbox(&self) -> Result<Vec<Message>, TernError> {
        Ok(self.client.outbox()?.into_iter().map(Into::into).collect())
    }

    /// Marks a conversation read (on every device of the user).
    pub fn mark_read(&self, kind: ConversationKind, conversation: String) -> Result<(), TernError> {
        Ok(self.client.mark_read(kind, &conversation)?)
    }

    /// Total unread count (app badge).
    pub fn total_unread(&self) -> Result<u64, TernError> {
        Ok(self.client.total_unread()?)
    }

    /// Sends a text into a group.
    pub fn send_group_text(&self, group: String, text: String) -> Result<Message, TernError> {
        Ok(self.client.send_group_text(&group, &text)?.into())
    }

    /// Sends an app-defined payload to a user or group.
    pub fn send_to(
        &self,
        kind: ConversationKind,
        to: String,
        content_type: u32,
        body: Vec<u8>,
    ) -> Result<Message, TernError> {
        Ok(self.client.send_to(kind, &to, content_type, &body)?.into())
    }

    /// Creates a group owned by this user.
    pub fn create_group(&self, name: String, members: Vec<String>) -> Result<GroupInfo, TernError> {
        Ok(self.client.create_group(&name, &members)?)
    }

    /// Creates a large group (read diffusion: up to the server's large-group limit).
    pub fn create_large_group(
        &self,
        name: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, TernError> {
        Ok(self.client.create_large_group(&name, &members)?)
    }

    /// Adds members to a group.
    pub fn add_group_members(
        &self,
        group: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, TernError> {
        Ok(self.client.add_group_members(&group, &members)?)
    }

    /// Removes members (owner only).
    pub fn remove_group_members(
        &self,
        group: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, TernError> {
        Ok(self.client.remove_group_members(&group, &members)?)
    }

    /// Leaves a group.
    pub fn leave_group(&self, group: String) -> Result<(), TernError> {
        Ok(self.client.leave_group(&group)?)
    }

    /// A group's description (members only).
    pub fn group_info(&self, group: String) -> Result<GroupInfo, TernError> {
        Ok(self.client.group_info(&group)?)
    }

    /// Every group of this user.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, TernError> {
        Ok(self.client.groups()?)
    }

    /// Recalls an own message (within the server's window).
    pub fn recall(&self, local_id: i64) -> Result<(), TernError> {
        Ok(self.client.recall(local_id)?)
    }

    /// Registers this device's push token (empty token removes it).
    pub fn register_push_token(&self, provider: String, token: String) -> Result<(), TernError> {
        Ok(self.client.register_push_token(&provider, &token)?)
    }

    /// A page of history older than `before` (local id), from the device or the server.
    pub fn load_history(
        &self,
        kind: ConversationKind,
        conversation: String,
        before: Option<i64>,
        limit: u32,
    ) -> Result<HistoryPage, TernError> {
        let page = self
            .client
            .load_history(kind, &conversation, before, limit)?;
        Ok(HistoryPage {
            messages: page.messages.into_iter().map(Into::into).collect(),
            at_beginning: page.at_beginning,
        })
    }

    /// Highest contiguous inbox seq stored locally.
    pub fn sync_cursor(&self) -> Result<u64, TernError> {
        Ok(self.client.sync_cursor()?)
    }

    /// The device moved to another network (label chosen by the app, e.g. "wifi").
    pub fn network_changed(&self, label: String) {
        self.client.network_changed(&label);
    }

    /// The app moved to the foreground (true) or background.
    pub fn set_foreground(&self, foreground: bool) {
        self.client.set_foreground(foreground);
    }
}

struct Forward(Arc<dyn TernListener>);

impl core::EventListener for Forward {
    fn on_event(&self, event: core::ClientEvent) {
        self.0.on_event(event.into());
    }
}

// ---- one-to-one conversions between the client core's types and these ----

impl From<Platform> for core::Platform {
    fn from(p: Platform) -> Self {
        match p {
            Platform::Android => core::Platform::Android,
            Platform::Ios => core::Platform::Ios,
            Platform::Desktop => core::Platform::Desktop,
            Platform::Web => core::Platform::Web,
        }
    }
}

impl From<core::Message> for Message {
    fn from(m: core::Message) -> Self {
        Message {
            text: m.text().map(str::to_owned),
            local_id: m.local_id,
            client_msg_id: m.client_msg_id,
            server_msg_id: m.server_msg_id,
            conversation: m.conversation,
            kind: m.kind,
            sender: m.sender,
            recipient: m.recipient,
            content_type: m.content_type,
            body: m.body,
            client_ts_ms: m.client_ts_ms,
            server_ts_ms: m.server_ts_ms,
            seq: m.seq,
            outgoing: m.outgoing,
            status: m.status,
            recalled: m.recalled,
            read_count: m.read_count,
        }
    }
}

impl From<core::Conversation> for Conversation {
    fn from(c: core::Conversation) -> Self {
        Conversation {
            id: c.id,
            kind: c.kind,
            unread: c.unread,
            last_message: c.last_message.map(Into::into),
            last_activity_ms: c.last_activity_ms,
            latest_seq: c.latest_seq,
        }
    }
}

impl From<core::ConnectionState> for ConnectionState {
    fn from(s: core::ConnectionState) -> Self {
        match s {
            core::ConnectionState::Disconnected => ConnectionState::Disconnected,
            core::ConnectionState::Connecting => ConnectionState::Connecting,
            core::ConnectionState::Connected => ConnectionState::Connected,
            core::ConnectionState::WaitingToReconnect { delay_ms } => {
                ConnectionState::WaitingToReconnect { delay_ms }
            }
            core::ConnectionState::KickedOut { reason, text } => {
                ConnectionState::KickedOut { reason, text }
            }
            core::ConnectionState::LoginFailed { code, message } => ConnectionState::LoginFailed {
                code,
                detail: message,
            },
        }
    }
}

impl From<core::ClientEvent> for TernEvent {
    fn from(e: core::ClientEvent) -> Self {
        match e {
            core::ClientEvent::MessageReceived(m) => {
                TernEvent::MessageReceived { message: m.into() }
            }
            core::ClientEvent::MessageStatusChanged { local_id, status } => {
                TernEvent::MessageStatusChanged { local_id, status }
            }
            core::ClientEvent::MessageUpdated(m) => TernEvent::MessageUpdated { message: m.into() },
            core::ClientEvent::ConversationUpdated(c) => TernEvent::ConversationUpdated {
                conversation: c.into(),
            },
            core::ClientEvent::ConnectionStateChanged(s) => {
                TernEvent::ConnectionStateChanged { state: s.into() }
            }
            core::ClientEvent::SyncProgress { stored, head } => {
                TernEvent::SyncProgress { stored, head }
            }
            core::ClientEvent::TransportChanged { transport } => {
                TernEvent::TransportChanged { transport }
            }
        }
    }
}

impl From<core::ClientError> for TernError {
    fn from(e: core::ClientError) -> Self {
        match e {
            core::ClientError::NotLoggedIn => TernError::NotLoggedIn,
            core::ClientError::AlreadyLoggedIn => TernError::AlreadyLoggedIn,
            core::ClientError::InvalidArgument(detail) => TernError::InvalidArgument { detail },
            core::ClientError::MessageTooLarge { size, max } => TernError::MessageTooLarge {
                size: size as u64,
                max,
            },
            core::ClientError::Database(e) => TernError::Database {
                detail: e.to_string(),
            },
            core::ClientError::ShutDown => TernError::ShutDown,
            core::ClientError::NotFound => TernError::NotFound,
            core::ClientError::Runtime(detail) => TernError::Runtime { detail },
            core::ClientError::NotConnected => TernError::NotConnected,
            core::ClientError::Refused { code, message } => TernError::Refused {
                code,
                detail: message,
            },
            core::ClientError::Timeout => TernError::Timeout,
        }
    }
}
