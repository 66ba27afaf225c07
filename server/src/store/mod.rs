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

pub(crate) mod ops;
pub mod postgres;
pub(crate) mod rules;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

use async_trait::async_trait;
use bytes::Bytes;
use tern_protocol::pb;
use tern_protocol::{ClientMsgId, ErrorCode};

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
    /// The recipient is a service account: queue a c2s webhook delivery in the same
    /// transaction as the message (so an acknowledged message always reaches the
    /// business backend, even across a crash).
    pub to_service: bool,
    /// The business backend sends (HTTP API): into a group it need not be a member of.
    pub from_backend: bool,
    /// The sending device (empty for the HTTP API).
    pub device: String,
    /// The device's send order (`ChatMessage.send_seq`); 0 = unordered. The store takes
    /// only the device's next one ([`StoreError::OutOfOrder`] otherwise).
    pub send_seq: u64,
}

impl NewMessage {
    /// The message as timelines, pushes and webhooks carry it, once stored as `id` at
    /// server time `ts`.
    pub fn stored(&self, id: u64, ts: u64) -> pb::StoredMessage {
        pb::StoredMessage {
            server_msg_id: id,
            client_msg_id: bytes::Bytes::copy_from_slice(&self.client_msg_id.0),
            sender: self.sender.clone(),
            recipient: self.recipient.clone(),
            kind: self.kind as i32,
            content_type: self.content_type,
            body: self.body.clone(),
            client_ts_ms: self.client_ts_ms,
            server_ts_ms: ts,
            recalled: false,
        }
    }
}

/// A change to a group's membership.
#[derive(Debug, Clone)]
pub enum GroupOp {
    /// Create group `id` owned by `owner`, with `members` (the owner is added).
    Create {
        /// New group id (server-made or from the HTTP API).
        id: String,
        /// Display name.
        name: String,
        /// Creator and owner.
        owner: String,
        /// Initial members.
        members: Vec<String>,
        /// Read diffusion: messages go to one group log that members pull.
        large: bool,
    },
    /// `by` (a member, or `None` for the HTTP API) adds `members`.
    Add {
        /// Group id.
        group: String,
        /// Who asks; `None` = the business backend.
        by: Option<String>,
        /// Users to add.
        members: Vec<String>,
    },
    /// `by` (the owner, or `None` for the HTTP API) removes `members`.
    Remove {
        /// Group id.
        group: String,
        /// Who asks; `None` = the business backend.
        by: Option<String>,
        /// Users to remove.
        members: Vec<String>,
    },
    /// `user` leaves the group (ownership passes to the longest-standing member).
    Leave {
        /// Group id.
        group: String,
        /// Who leaves.
        user: String,
    },
}

/// Result of a group operation or read.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupOutcome {
    /// The group after the operation.
    pub info: pb::GroupInfo,
    /// Group events to push.
    pub fanout: Vec<Fanout>,
}

/// One queued webhook delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookJob {
    /// Row id (pass back to [`Store::webhook_done`] / [`Store::webhook_retry`]).
    pub id: u64,
    /// Which hook: `"c2s"` or `"push"`.
    pub hook: String,
    /// The JSON body to POST.
    pub payload: Vec<u8>,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// Where an offline push for a user goes, and what it shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PushTarget {
    /// Registered device tokens.
    pub tokens: Vec<PushToken>,
    /// Total unread count (the app icon badge).
    pub badge: u64,
    /// Highest timeline seq any device of the user acknowledged.
    pub delivered_seq: u64,
}

/// A device's push token.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PushToken {
    /// Device id.
    pub device: String,
    /// Platform name (`ANDROID`, `IOS`, ...).
    pub platform: String,
    /// `apns`, `fcm`, ... as the client registered it.
    pub provider: String,
    /// The token.
    pub token: String,
}

/// A timeline entry that must be pushed to a user's online sessions.
#[derive(Debug, Clone, PartialEq)]
pub struct Fanout {
    /// Whose timeline it is in (for a large group's log: the group id).
    pub user: String,
    /// The entry.
    pub entry: pb::TimelineEntry,
    /// Set for an entry of a large group's log: push it to these members' sessions,
    /// tagged with the group.
    pub log: Option<std::sync::Arc<LogRoute>>,
}

/// Where the entries of a large group's log go: every member's sessions. The members
/// are looked up by the router (from its cache or a read), never by the store writer:
/// reading 100,000 member ids inside the write would cost what read diffusion saves.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRoute {
    /// The group (the log's name on the wire).
    pub group: String,
}

/// The key of a large group's log in the timeline tables: `#` cannot start a user id,
/// so a log never collides with a user's timeline.
pub fn log_key(group: &str) -> String {
    format!("#{group}")
}

/// Group size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLimits {
    /// Largest group with write diffusion.
    pub members: usize,
    /// Largest large group (read diffusion).
    pub large_members: usize,
}

/// Result of [`Store::store_message`].
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// The server's id (defines order together with `server_ts_ms`).
    pub server_msg_id: u64,
    /// Seq of the entry in the sender's timeline (0 for a large group).
    pub sender_seq: u64,
    /// Large group: seq of the entry in the group's log (else 0).
    pub log_seq: u64,
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
    /// The database refused a statement for a reason that is not the disk's (a
    /// constraint, a lock held too long, a bug).
    #[error("database error: {0}")]
    Database(String),
    /// The disk failed: full, an I/O error, read-only, or the file could not be opened
    /// or created. Nothing was stored.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// A batch's commit failed: nothing in it was stored or acknowledged.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The writer thread is gone (the store was shut down).
    #[error("store is shut down")]
    Closed,
    /// The recipient never logged in (with `require_known_recipient`).
    #[error("unknown recipient")]
    UnknownRecipient,
    /// The write queue is full: the disk cannot keep up. Retry later.
    #[error("store write queue is full")]
    Busy,
    /// No group with this id.
    #[error("no such group")]
    GroupNotFound,
    /// The caller may not do this (not a member, not the owner, not the sender).
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
    /// The group would exceed its member limit.
    #[error("group member limit reached")]
    GroupFull,
    /// No such message (or not the caller's).
    #[error("no such message")]
    MessageNotFound,
    /// The recall window has passed.
    #[error("recall window has passed")]
    RecallExpired,
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    /// The message's send seq is not the next of its device: resend from `expected`.
    #[error("out of order: the device's next send is {expected}")]
    OutOfOrder {
        /// The send seq the store takes next from this device.
        expected: u64,
    },
    /// Stored data could not be decoded, or the database file is damaged.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// The database server cannot be reached (down, restarting, network): retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused the credentials.
    #[error("database access denied: {0}")]
    AccessDenied(String),
    /// A deadlock or serialization failure between concurrent writers; the writer runs
    /// the batch again, so callers see it only when that keeps failing.
    #[error("write conflict: {0}")]
    Conflict(String),
    /// The database's schema is newer than this binary knows: upgrade the server.
    #[error(
        "the database schema is at migration {found}, this tern-server knows up to {known}: run a newer tern-server"
    )]
    SchemaTooNew {
        /// Migrations applied in the database.
        found: usize,
        /// Migrations this binary has.
        known: usize,
    },
    /// The store's configuration is invalid (URL, certificate file).
    #[error("store configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// The store refused the request by its rules (unknown id, not allowed, a limit, out
    /// of order): the caller's doing, answered with its code, not a store failure (which
    /// is logged as an error and counted).
    pub fn is_refusal(&self) -> bool {
        self.is_final_refusal()
            || matches!(
                self,
                StoreError::OutOfOrder { .. }
                    | StoreError::GroupFull
                    | StoreError::MessageNotFound
                    | StoreError::RecallExpired
            )
    }

    /// A refusal for good of a message (resending it cannot succeed): it still uses up
    /// the message's send seq, so one bad message never blocks the device's outbox.
    pub fn is_final_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::UnknownRecipient
                | StoreError::GroupNotFound
                | StoreError::NotAllowed(_)
                | StoreError::Invalid(_)
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    /// Sorts SQLite's errors by cause: the disk, damaged data, or the database itself.
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(C::DiskFull | C::SystemIoFailure | C::CannotOpen | C::ReadOnly) => {
                StoreError::Io(e.to_string())
            }
            Some(C::DatabaseCorrupt | C::NotADatabase) => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Database(e.to_string()),
        }
    }
}

/// The wire code for a failed store operation. Refusals (not a member, recall too
/// late, ...) are answers, not faults; only real storage trouble is logged as an error.
pub fn store_failure(e: StoreError) -> (ErrorCode, String) {
    let refused = |code| (code, e.to_string());
    match e {
        StoreError::UnknownRecipient => refused(ErrorCode::RecipientNotFound),
        StoreError::GroupNotFound => refused(ErrorCode::GroupNotFound),
        StoreError::NotAllowed(_) => refused(ErrorCode::NotAllowed),
        StoreError::GroupFull => refused(ErrorCode::GroupFull),
        StoreError::MessageNotFound => refused(ErrorCode::MessageNotFound),
        StoreError::RecallExpired => refused(ErrorCode::RecallExpired),
        StoreError::Invalid(_) => refused(ErrorCode::InvalidArgument),
        StoreError::OutOfOrder { .. } => refused(ErrorCode::OutOfOrder),
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

    /// The send seq the store takes next from `device` of `user` (announced at login).
    async fn next_send_seq(&self, user: &str, device: &str) -> Result<u64, StoreError>;

    /// `send_seq` of `device` was refused for good before reaching the store (too large,
    /// malformed): uses the number up if it is the device's next, so the sends behind it
    /// are taken; [`StoreError::OutOfOrder`] if it is not (the client resends from the
    /// gap, and this message is refused again in its turn). Ordered when called, like
    /// [`Store::store_message`].
    fn skip_send(&self, user: &str, device: &str, send_seq: u64) -> StoreFuture<()>;

    /// Latest seq of `user`'s timeline (0 if none).
    async fn head_seq(&self, user: &str) -> Result<u64, StoreError>;

    /// The store's generation: made when the store is created, made anew when it is
    /// restored from a backup (clients compare it to detect a restore).
    fn generation(&self) -> u64;

    /// The head of `owner`'s timeline (a user, or a large group's log key) when the
    /// store was last restored from a backup; 0 if it never was. Entries up to it are
    /// the ones a device held before the restore; above it they may differ.
    async fn restore_point(&self, owner: &str) -> Result<u64, StoreError>;

    /// Records a successful login (the user becomes known).
    async fn record_login(&self, user: &str, device: &str) -> Result<(), StoreError>;

    /// Whether `user` ever logged in or received a message.
    async fn user_exists(&self, user: &str) -> Result<bool, StoreError>;

    /// Applies a group membership change (ordered with messages, like every write);
    /// `max_members` caps the group's size.
    async fn group_op(&self, op: GroupOp, limits: GroupLimits) -> Result<GroupOutcome, StoreError>;

    /// Whether `user` is a member of `group` and it is a large group (may read its log).
    async fn log_member(&self, user: &str, group: &str) -> Result<bool, StoreError>;

    /// The large groups `user` is in, as summaries in their logs' positions, within one
    /// page's byte budget (`tern_protocol::page`): `true` if groups were left out.
    async fn logs(
        &self,
        user: &str,
        last_messages: u32,
    ) -> Result<(Vec<pb::ConversationSummary>, bool), StoreError>;

    /// A group, if it exists.
    async fn group_info(&self, group: &str) -> Result<Option<pb::GroupInfo>, StoreError>;

    /// Every group `user` is a member of.
    async fn groups_of(&self, user: &str) -> Result<Vec<pb::GroupInfo>, StoreError>;

    /// `user` read `conversation` up to `up_to_seq` of their timeline: appends a READ
    /// mark to their timeline (for their other devices), resets the server's unread
    /// count, and appends READ receipts to the timelines of the senders of the newly
    /// read messages (for groups only up to `group_receipts_max` members).
    async fn mark_read(
        &self,
        user: &str,
        kind: pb::ConversationKind,
        conversation: &str,
        up_to_seq: u64,
        group_receipts_max: usize,
    ) -> Result<Vec<Fanout>, StoreError>;

    /// `user` recalls their message `server_msg_id` (sent at most `window_ms` ago): the
    /// content is erased and a recall entry goes to every timeline that holds it.
    async fn recall(
        &self,
        user: &str,
        server_msg_id: u64,
        window_ms: u64,
    ) -> Result<Vec<Fanout>, StoreError>;

    /// Message entries of one conversation of `user`'s timeline below `before_seq`
    /// (0 = from the newest), newest first; `true` when older ones exist.
    async fn history(
        &self,
        user: &str,
        kind: pb::ConversationKind,
        conversation: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<(Vec<pb::TimelineEntry>, bool), StoreError>;

    /// Registers (or with an empty token removes) a device's push token.
    async fn set_push_token(
        &self,
        user: &str,
        device: &str,
        platform: pb::Platform,
        provider: &str,
        token: &str,
    ) -> Result<(), StoreError>;

    /// Push tokens, badge and delivery progress of `user`.
    async fn push_target(&self, user: &str) -> Result<PushTarget, StoreError>;

    /// Queues a webhook delivery (durably).
    async fn webhook_enqueue(&self, hook: &str, payload: Vec<u8>) -> Result<(), StoreError>;

    /// Deliveries due at `now_ms`, oldest first.
    async fn webhooks_due(
        &self,
        hook: &str,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<WebhookJob>, StoreError>;

    /// A delivery succeeded: forget it.
    async fn webhook_done(&self, id: u64) -> Result<(), StoreError>;

    /// A delivery failed: try again at `next_at_ms`.
    async fn webhook_retry(&self, id: u64, next_at_ms: u64) -> Result<(), StoreError>;

    /// Deliveries of `hook` still queued (due or waiting for a retry): the backlog.
    async fn webhook_backlog(&self, hook: &str) -> Result<u64, StoreError>;

    /// Waits until everything queued so far is committed.
    async fn flush(&self) -> Result<(), StoreError>;
}
