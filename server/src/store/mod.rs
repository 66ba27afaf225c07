//! Durable storage behind a trait.
//!
//! The server's promise "durable before acknowledged" lives here: [`Store::store_message`]
//! returns only after the message and its timeline entries are committed, and the
//! session sends `SendResult` only after that. Routing and sessions never touch SQL, so
//! a PostgreSQL backend (or a sharded one) can replace [`sqlite::SqliteStore`] later
//! without changing them.
//!
//! The data model is the timeline model of the reference designs (write diffusion):
//! a message is stored once; every user it concerns gets an entry in their own
//! *timeline* with the next per-user `seq` (contiguous, starting at 1). Clients sync by
//! seq. Per-conversation rows keep unread counts and the latest seq for summaries.

pub mod sqlite;

use async_trait::async_trait;
use bytes::Bytes;
use tern_protocol::ClientMsgId;
use tern_protocol::pb;

/// A message to store, already validated by the session.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The authenticated sender (or the system account for s2c).
    pub sender: String,
    /// The sender's id for this message (idempotency key together with `sender`).
    pub client_msg_id: ClientMsgId,
    /// Recipient user id.
    pub recipient: String,
    /// Conversation kind.
    pub kind: pb::ConversationKind,
    /// App-defined content type (0 = text).
    pub content_type: u32,
    /// The payload.
    pub body: Bytes,
    /// Sender's clock, informational.
    pub client_ts_ms: u64,
    /// Refuse with [`StoreError::UnknownRecipient`] unless the recipient logged in
    /// before. Checked inside the write so it keeps the write's order.
    pub require_known_recipient: bool,
}

/// A timeline entry that must be pushed to a user's online sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Fanout {
    /// Whose timeline it is in.
    pub user: String,
    /// The entry.
    pub entry: pb::TimelineEntry,
}

/// Result of [`Store::store_message`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// The server's id (defines order together with `server_ts_ms`).
    pub server_msg_id: u64,
    /// Seq of the entry in the sender's timeline.
    pub sender_seq: u64,
    /// Server timestamp.
    pub server_ts_ms: u64,
    /// `true` when this id was stored before: nothing new was written.
    pub duplicate: bool,
    /// New timeline entries to push (empty for a duplicate).
    pub fanout: Vec<Fanout>,
}

/// One page of a timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct TimelinePage {
    /// Entries, ascending seq.
    pub entries: Vec<pb::TimelineEntry>,
    /// More entries remain in the requested range.
    pub more: bool,
    /// Latest seq of the timeline.
    pub head_seq: u64,
}

/// Conversation summaries of one user.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryPage {
    /// Most recently active first.
    pub conversations: Vec<pb::ConversationSummary>,
    /// More conversations exist.
    pub more: bool,
    /// Latest seq of the timeline.
    pub head_seq: u64,
}

/// A pending store operation, already queued.
pub type StoreFuture<T> = futures_util::future::BoxFuture<'static, Result<T, StoreError>>;

/// Why a storage operation failed. Nothing was acknowledged when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error (disk full, I/O error, corruption).
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// The writer thread is gone (the store was shut down).
    #[error("store is shut down")]
    Closed,
    /// The recipient never logged in (with `require_known_recipient`).
    #[error("unknown recipient")]
    UnknownRecipient,
    /// The write queue is full: the disk cannot keep up. Retry later.
    #[error("store write queue is full")]
    Busy,
    /// A stored row could not be decoded.
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

/// The storage interface the server needs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores a message once (idempotent on `(sender, client_msg_id)`), appending
    /// timeline entries for the sender and the recipient. The future resolves after
    /// commit. The write is *ordered when this is called*, not when the future is first
    /// polled, so a session can pipeline several sends and keep their order.
    fn store_message(&self, msg: NewMessage) -> StoreFuture<StoredMessage>;

    /// Entries of `user`'s timeline with `after < seq <= until` (`until` 0 = no bound),
    /// at most `limit`.
    async fn timeline(
        &self,
        user: &str,
        after: u64,
        until: u64,
        limit: u32,
    ) -> Result<TimelinePage, StoreError>;

    /// Per-conversation summaries, most recent first, with the last `last_messages`
    /// message entries of each.
    async fn summaries(
        &self,
        user: &str,
        last_messages: u32,
        limit: u32,
    ) -> Result<SummaryPage, StoreError>;

    /// A device of `user` stored everything up to `seq`. Advances its cursor and, for
    /// direct messages newly delivered to this user, appends `DELIVERED` receipts to the
    /// senders' timelines; returns those receipt entries for pushing.
    async fn ack_delivered(
        &self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> Result<Vec<Fanout>, StoreError>;

    /// Latest seq of `user`'s timeline (0 if none).
    async fn head_seq(&self, user: &str) -> Result<u64, StoreError>;

    /// Records a successful login (the user becomes known).
    async fn record_login(&self, user: &str, device: &str) -> Result<(), StoreError>;

    /// Whether `user` ever logged in or received a message.
    async fn user_exists(&self, user: &str) -> Result<bool, StoreError>;

    /// Waits until everything queued so far is committed.
    async fn flush(&self) -> Result<(), StoreError>;
}
