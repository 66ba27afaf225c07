//! The types an app sees: messages, conversations, statuses, connection states and
//! events. Plain data, so the FFI layer can mirror them one to one.

use tern_protocol::pb;

/// What a conversation is with.
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    /// One-to-one with a user.
    Direct,
    /// A group.
    Group,
    /// Messages from the business backend.
    System,
}

impl ConversationKind {
    /// From the wire enum value.
    pub fn from_wire(v: i32) -> Self {
        match pb::ConversationKind::try_from(v) {
            Ok(pb::ConversationKind::Group) => ConversationKind::Group,
            Ok(pb::ConversationKind::System) => ConversationKind::System,
            _ => ConversationKind::Direct,
        }
    }

    /// To the wire enum value.
    pub fn to_wire(self) -> i32 {
        match self {
            ConversationKind::Direct => pb::ConversationKind::Direct as i32,
            ConversationKind::Group => pb::ConversationKind::Group as i32,
            ConversationKind::System => pb::ConversationKind::System as i32,
        }
    }
}

/// Where an outgoing message is (incoming messages are `Delivered`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
#[serde(rename_all = "lowercase", tag = "state")]
pub enum MessageStatus {
    /// Stored locally, in the outbox, not yet acknowledged by the server.
    Pending,
    /// The server stored it.
    Sent,
    /// A device of the recipient stored it.
    Delivered,
    /// The recipient read it.
    Read,
    /// It could not be sent; `retry` puts it back in the outbox.
    Failed {
        /// Why.
        reason: String,
    },
}

impl MessageStatus {
    /// Database code.
    pub fn code(&self) -> i64 {
        match self {
            MessageStatus::Pending => 0,
            MessageStatus::Sent => 1,
            MessageStatus::Delivered => 2,
            MessageStatus::Read => 3,
            MessageStatus::Failed { .. } => 4,
        }
    }

    /// From the database code and error text.
    pub fn from_db(code: i64, error: Option<String>) -> Self {
        match code {
            1 => MessageStatus::Sent,
            2 => MessageStatus::Delivered,
            3 => MessageStatus::Read,
            4 => MessageStatus::Failed {
                reason: error.unwrap_or_default(),
            },
            _ => MessageStatus::Pending,
        }
    }
}

/// A message as stored on this device.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Message {
    /// This device's id for the message (stable, for UI lists and `retry`).
    pub local_id: i64,
    /// The sender-made id, 32 hex characters.
    pub client_msg_id: String,
    /// The server's id, once stored there.
    pub server_msg_id: Option<u64>,
    /// The other side: peer user, group or system account.
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
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Sender's clock.
    pub client_ts_ms: u64,
    /// Server's clock; defines the order.
    pub server_ts_ms: Option<u64>,
    /// Seq in this user's timeline.
    pub seq: Option<u64>,
    /// Sent by this user.
    pub outgoing: bool,
    /// Delivery status.
    pub status: MessageStatus,
    /// The sender recalled it: the body is empty.
    pub recalled: bool,
    /// Outgoing group message: how many members have read it (groups up to the
    /// server's `group_receipts_max_members`; 0 otherwise).
    pub read_count: u32,
}

impl Message {
    /// The body as text, if it is UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }
}

/// A conversation summary for the list screen.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Conversation {
    /// Peer user, group or system account id.
    pub id: String,
    /// Kind.
    pub kind: ConversationKind,
    /// Unread incoming messages.
    pub unread: u64,
    /// Most recent message stored locally.
    pub last_message: Option<Message>,
    /// Time of the last activity (server clock for received messages).
    pub last_activity_ms: u64,
    /// Highest timeline seq of this conversation known.
    pub latest_seq: u64,
}

/// The connection, as the app should show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum ConnectionState {
    /// Not logged in, or logged out.
    Disconnected,
    /// Connecting and logging in.
    Connecting,
    /// Logged in; messages flow.
    Connected,
    /// Lost; the next attempt is in `delay_ms`.
    WaitingToReconnect {
        /// Delay before the next attempt.
        delay_ms: u64,
    },
    /// Another login replaced this session (or an admin ended it). No reconnect.
    KickedOut {
        /// Reason name (e.g. `LOGIN_ELSEWHERE`).
        reason: String,
        /// Text for the user.
        text: String,
    },
    /// The server refused the login for good (bad or expired token, banned, upgrade).
    LoginFailed {
        /// Error code name.
        code: String,
        /// Detail.
        message: String,
    },
}

/// Something the app should know.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A new message was stored: incoming, or sent from another device of this user
    /// (`outgoing` is true). Announced in timeline order.
    MessageReceived(Message),
    /// An outgoing message changed status.
    MessageStatusChanged {
        /// Which message.
        local_id: i64,
        /// The new status.
        status: MessageStatus,
    },
    /// A stored message changed in place: recalled, or its group read count grew.
    MessageUpdated(Message),
    /// A conversation's summary changed (new message, unread count): its latest state.
    /// While a catch-up downloads sync pages, a conversation's changes are told at most
    /// every 250 ms, and at once when the catch-up ends.
    ConversationUpdated(Conversation),
    /// The connection state changed.
    ConnectionStateChanged(ConnectionState),
    /// Catch-up progress after (re)connecting: everything up to `stored` of `head` is local.
    SyncProgress {
        /// Highest contiguous seq stored.
        stored: u64,
        /// Latest seq on the server.
        head: u64,
    },
    /// A session started on another transport than the last one: `quic`, `tcp` (TLS
    /// over TCP, where UDP is blocked) or `ws` (WebSocket). Also in
    /// [`Diagnostics::transport`].
    TransportChanged {
        /// The transport now in use.
        transport: String,
    },
}

/// Receives events. Called on the client's event thread, never on a network task;
/// a slow listener delays later events but never the connection.
pub trait EventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: ClientEvent);
}

/// What the connection machinery currently believes, for diagnostics screens and tests.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Diagnostics {
    /// Network label in use (as reported by `network_changed`).
    pub network: String,
    /// Heartbeat interval in use now, in ms.
    pub heartbeat_interval_ms: u64,
    /// Whether the smart heartbeat finished learning this network's interval.
    pub heartbeat_locked: bool,
    /// Heartbeats sent since the client was created.
    pub heartbeats_sent: u64,
    /// Smoothed round-trip time, in ms, once measured.
    pub srtt_ms: Option<u64>,
    /// Messages sent and not yet acknowledged by the server.
    pub in_flight: u64,
    /// Whether sends currently go twice because the path is measured lossy
    /// (`ClientConfig::loss_copies`).
    pub sends_copied: bool,
    /// The transport of the current (or last) session: `quic`, or `tcp` (TLS over TCP,
    /// where UDP is blocked). `None` before the first session.
    pub transport: Option<String>,
    /// Why the last connection ended on the server's side of the protocol (a frame
    /// this client could not read, say), if one did: the client backed off instead of
    /// reconnecting at once. `None` until that happens.
    pub last_error: Option<String>,
}

/// A group as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct GroupInfo {
    /// Group id (the conversation id of its messages).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Owner user id.
    pub owner: String,
    /// Members, in join order.
    pub members: Vec<String>,
    /// Creation time, unix ms.
    pub created_ms: u64,
    /// A large group (read diffusion).
    pub large: bool,
}

impl From<tern_protocol::pb::GroupInfo> for GroupInfo {
    fn from(g: tern_protocol::pb::GroupInfo) -> Self {
        GroupInfo {
            id: g.group,
            name: g.name,
            owner: g.owner,
            members: g.members,
            created_ms: g.created_ms,
            large: g.large,
        }
    }
}

/// One page of [`Client::load_history`](crate::Client::load_history).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    /// Messages, newest first.
    pub messages: Vec<Message>,
    /// No older message exists (on this device or the server).
    pub at_beginning: bool,
}
