//! The local message database.
//!
//! One SQLite file per user and data directory (`<data>/<user>/tern.db`, WAL mode),
//! changed only through numbered migrations. It holds:
//!
//! * `messages`: every message the device knows, unique by client message id (so a
//!   message pushed twice, or pushed and then synced, is stored once) and by server id;
//! * `outbox`: messages the app sent that the server has not acknowledged yet. A row is
//!   written *before* the first attempt to send, in the same transaction as the
//!   message, so a message survives an app kill at any moment and is resent with the
//!   same client message id (the server de-duplicates);
//! * `conversations`: last activity, latest seq, and the unread count, kept as
//!   `base_unread` (what the server reported in a summary, or 0 after `mark_read`) at
//!   `base_seq`, plus the incoming messages stored above `base_seq`. Derived rather
//!   than incremented, so a summary followed by a sync of the same messages never
//!   counts them twice;
//! * `received_seqs` and the `cursor`: the highest contiguous inbox seq stored, plus
//!   the seqs stored above it (out of order). A gap is the difference.
//!
//! New messages (incoming, or sent from another device of the user) are *announced* to
//! the app (returned as new) only when the cursor passes them, so the app sees them in timeline order even when they were stored out
//! of order (a push above a gap, the last messages of a conversation summary).
//!
//! Every method is synchronous and short; the caller holds the store's mutex.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};
use tern_protocol::ClientMsgId;

use crate::types::{ConversationKind, Message, MessageStatus};

mod conversations;
mod history;
mod outbox;
mod restore;
mod schema;
#[cfg(test)]
mod tests;
mod timeline;

use conversations::*;
use history::*;
use timeline::*;

pub use restore::Rewound;

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed (disk full, corruption, ...).
    #[error("local database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The data directory could not be created.
    #[error("cannot create data directory: {0}")]
    Io(#[from] std::io::Error),
}

/// What a store operation changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Incoming messages now announced to the app, in timeline order.
    pub new_messages: Vec<Message>,
    /// Outgoing messages whose status changed (receipts).
    pub status_changes: Vec<(i64, MessageStatus)>,
    /// Messages changed in place (recalled, group read count), by local id.
    pub updated: Vec<i64>,
    /// Conversations touched.
    pub conversations: Vec<(ConversationKind, String)>,
}

/// What the local store can answer for a history page.
#[derive(Debug, PartialEq)]
pub enum LocalPage {
    /// These messages (newest first) with nothing missing between them; `true` when
    /// they reach the beginning of the conversation.
    Complete(Vec<Message>, bool),
    /// Not provably complete: ask the server for history below `before_seq`
    /// (0 = from the newest).
    Fetch {
        /// Exclusive upper bound for the server page.
        before_seq: u64,
    },
}

/// Prepared statements kept per connection: every statement a sync page runs, with room
/// for the app's queries.
const STATEMENT_CACHE: usize = 64;

/// Runs `sql` from the connection's statement cache. (rusqlite's `execute` and
/// `query_row` compile the statement anew on every call: before this, compiling took
/// more of a catch-up's time than running.)
fn exec(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// [`exec`] for a query of one row.
fn one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, f)
}

/// The local store of one user.
pub struct Db {
    conn: Connection,
    user: String,
}

impl Db {
    /// Opens (creating and migrating) the store of `user` under `data_dir`.
    pub fn open(data_dir: &Path, user: &str) -> Result<Db, DbError> {
        let dir = data_dir.join(user);
        std::fs::create_dir_all(&dir)?;
        let mut conn = Connection::open(dir.join("tern.db"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A phone can lose power; but the server holds every message too, and the
        // cursor only moves after a commit, so NORMAL is enough: a lost commit is
        // simply synced again.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // 16 MiB of page cache (SQLite's default is 2 MiB): a catch-up's inserts land
        // on a leaf per conversation in each per-conversation index; with a small cache
        // most of them were read back from the file on every page.
        conn.pragma_update(None, "cache_size", -16_384)?;
        conn.pragma_update(None, "wal_autocheckpoint", 8_192)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::migrate(&mut conn)?;
        Ok(Db {
            conn,
            user: user.to_owned(),
        })
    }

    /// A store of `user` in memory (tests and fuzzing: nothing survives the value).
    pub fn open_in_memory(user: &str) -> Result<Db, DbError> {
        let mut conn = Connection::open_in_memory()?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        schema::migrate(&mut conn)?;
        Ok(Db {
            conn,
            user: user.to_owned(),
        })
    }

    /// The transport that last worked on network `label`, if one did.
    pub fn preferred_transport(
        &self,
        label: &str,
    ) -> Result<Option<tern_protocol::link::Transport>, DbError> {
        use tern_protocol::link::Transport;
        Ok(match state(&self.conn, &format!("transport:{label}"))? {
            1 => Some(Transport::Quic),
            2 => Some(Transport::Tcp),
            3 => Some(Transport::WebSocket),
            _ => None,
        })
    }

    /// Remembers that `transport` worked on network `label`.
    pub fn set_preferred_transport(
        &self,
        label: &str,
        transport: tern_protocol::link::Transport,
    ) -> Result<(), DbError> {
        use tern_protocol::link::Transport;
        let code = match transport {
            Transport::Quic => 1,
            Transport::Tcp => 2,
            Transport::WebSocket => 3,
        };
        Ok(set_state(&self.conn, &format!("transport:{label}"), code)?)
    }

    /// The user this store belongs to.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// One message by local id.
    pub fn message(&self, local_id: i64) -> Result<Option<Message>, DbError> {
        Ok(one(
            &self.conn,
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE local_id = ?1"),
            params![local_id],
            row_to_message,
        )
        .optional()?)
    }

    /// Number of messages stored (for tests and the CLI).
    pub fn message_count(&self) -> Result<u64, DbError> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get::<_, i64>(0))?
            as u64)
    }
}

const MESSAGE_COLUMNS: &str =
    "local_id, client_msg_id, server_msg_id, conversation, conv_kind, sender, recipient,
     content_type, body, client_ts, server_ts, seq, outgoing, status, error, recalled, read_count";

/// How many columns [`MESSAGE_COLUMNS`] names.
const MESSAGE_COLUMN_COUNT: usize = 17;

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let id: Vec<u8> = r.get(1)?;
    let status: i64 = r.get(13)?;
    let error: Option<String> = r.get(14)?;
    Ok(Message {
        local_id: r.get(0)?,
        client_msg_id: ClientMsgId::from_slice(&id)
            .map(|i| i.to_hex())
            .unwrap_or_default(),
        server_msg_id: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
        conversation: r.get(3)?,
        kind: ConversationKind::from_wire(r.get(4)?),
        sender: r.get(5)?,
        recipient: r.get(6)?,
        content_type: r.get(7)?,
        body: r.get(8)?,
        client_ts_ms: r.get::<_, i64>(9)? as u64,
        server_ts_ms: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
        seq: r.get::<_, Option<i64>>(11)?.map(|v| v as u64),
        outgoing: r.get(12)?,
        status: MessageStatus::from_db(status, error),
        recalled: r.get(15)?,
        read_count: r.get(16)?,
    })
}

fn set_state(tx: &Connection, key: &str, value: u64) -> rusqlite::Result<()> {
    exec(
        tx,
        "INSERT INTO state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value as i64],
    )?;
    Ok(())
}

fn state(conn: &Connection, key: &str) -> rusqlite::Result<u64> {
    Ok(one(
        conn,
        "SELECT value FROM state WHERE key = ?1",
        params![key],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .unwrap_or(0) as u64)
}
