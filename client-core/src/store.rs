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

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tern_protocol::pb::timeline_entry::Body;
use tern_protocol::{ClientMsgId, pb};

use crate::types::{Conversation, ConversationKind, Message, MessageStatus};

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

const MIGRATIONS: &[&str] = &["CREATE TABLE messages (
        local_id INTEGER PRIMARY KEY,
        client_msg_id BLOB NOT NULL UNIQUE,
        server_msg_id INTEGER UNIQUE,
        conversation TEXT NOT NULL,
        conv_kind INTEGER NOT NULL,
        sender TEXT NOT NULL,
        recipient TEXT NOT NULL,
        content_type INTEGER NOT NULL,
        body BLOB NOT NULL,
        client_ts INTEGER NOT NULL,
        server_ts INTEGER,
        seq INTEGER,
                outgoing INTEGER NOT NULL,
        status INTEGER NOT NULL,
        error TEXT,
        announced INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX messages_unannounced ON messages (seq) WHERE announced = 0;
    CREATE INDEX messages_by_conversation ON messages (conv_kind, conversation, server_ts, server_msg_id);
    CREATE TABLE outbox (
        local_id INTEGER PRIMARY KEY REFERENCES messages (local_id)
    );
    CREATE TABLE conversations (
        conv_kind INTEGER NOT NULL,
        conversation TEXT NOT NULL,
        last_local_id INTEGER,
        last_activity INTEGER NOT NULL,
        base_unread INTEGER NOT NULL DEFAULT 0,
        base_seq INTEGER NOT NULL DEFAULT 0,
        latest_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (conv_kind, conversation)
    ) WITHOUT ROWID;
    CREATE TABLE received_seqs (seq INTEGER PRIMARY KEY);
    CREATE TABLE state (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;",
    // 2: the highest server id each receipt status covers per conversation. Receipts
    // arrive as pushes (datagrams) and can overtake the SendResult (stream) of the
    // messages they cover; a SendResult arriving late must still land on Delivered/Read.
    "ALTER TABLE conversations ADD COLUMN delivered_up_to INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE conversations ADD COLUMN read_up_to INTEGER NOT NULL DEFAULT 0;",
    // 3: recalls, group read counts, read marks waiting to reach the server, the seq
    // ranges of each conversation held completely (history roaming), group names.
    "ALTER TABLE messages ADD COLUMN recalled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE messages ADD COLUMN read_count INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_by_conv_seq ON messages (conv_kind, conversation, seq);
    CREATE TABLE recalled_ids (server_msg_id INTEGER PRIMARY KEY);
    CREATE TABLE group_reads (
        conversation TEXT NOT NULL,
        reader TEXT NOT NULL,
        up_to INTEGER NOT NULL,
        PRIMARY KEY (conversation, reader)
    ) WITHOUT ROWID;
    CREATE TABLE pending_reads (
        conv_kind INTEGER NOT NULL,
        conversation TEXT NOT NULL,
        up_to_seq INTEGER NOT NULL,
        PRIMARY KEY (conv_kind, conversation)
    ) WITHOUT ROWID;
    CREATE TABLE held_ranges (
        conv_kind INTEGER NOT NULL,
        conversation TEXT NOT NULL,
        lo INTEGER NOT NULL,
        hi INTEGER NOT NULL,
        PRIMARY KEY (conv_kind, conversation, lo)
    ) WITHOUT ROWID;
    CREATE TABLE groups (id TEXT PRIMARY KEY, name TEXT NOT NULL) WITHOUT ROWID;",
    // 4: large groups (read diffusion). Their messages are entries of the group's log,
    // not of the user's timeline: `messages.log` names the log and `seq` is the log's
    // seq. Each log has its own cursor (`state` keys `cursor:<group>`,
    // `sync_base:<group>`) and held-above-a-gap set.
    "ALTER TABLE messages ADD COLUMN log TEXT;
    CREATE TABLE log_received (log TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (log, seq)) WITHOUT ROWID;
    CREATE TABLE logs (grp TEXT PRIMARY KEY) WITHOUT ROWID;
    ALTER TABLE conversations ADD COLUMN base_mark INTEGER NOT NULL DEFAULT 0;"];

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

/// The local store of one user.
pub struct Db {
    conn: Connection,
    user: String,
}

const MESSAGE_COLUMNS: &str =
    "local_id, client_msg_id, server_msg_id, conversation, conv_kind, sender, recipient,
     content_type, body, client_ts, server_ts, seq, outgoing, status, error, recalled, read_count";

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
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(Db {
            conn,
            user: user.to_owned(),
        })
    }

    /// The user this store belongs to.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Highest contiguous inbox seq stored.
    pub fn cursor(&self) -> Result<u64, DbError> {
        Ok(state(&self.conn, "cursor")?)
    }

    /// Lowest seq stored above the cursor, if any: the end of the first gap.
    pub fn first_held_seq(&self) -> Result<Option<u64>, DbError> {
        let seq: Option<i64> =
            self.conn
                .query_row("SELECT MIN(seq) FROM received_seqs", [], |r| r.get(0))?;
        Ok(seq.map(|s| s as u64))
    }

    /// Highest seq stored at all (above the cursor when there is a gap).
    pub fn max_seq(&self) -> Result<u64, DbError> {
        let above: Option<i64> =
            self.conn
                .query_row("SELECT MAX(seq) FROM received_seqs", [], |r| r.get(0))?;
        Ok(above.map_or(self.cursor()?, |s| s as u64))
    }

    /// Queues an outgoing message: the message row and its outbox row, atomically.
    pub fn enqueue(
        &mut self,
        id: ClientMsgId,
        to: &str,
        kind: ConversationKind,
        content_type: u32,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Message, DbError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT INTO messages (client_msg_id, conversation, conv_kind, sender, recipient, content_type, body, client_ts, outgoing, status)
             VALUES (?1, ?2, ?3, ?4, ?2, ?5, ?6, ?7, 1, ?8)",
            params![&id.0[..], to, kind.to_wire(), self.user, content_type, body, now_ms as i64, MessageStatus::Pending.code()],
        )?;
        let local_id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO outbox (local_id) VALUES (?1)",
            params![local_id],
        )?;
        touch_conversation(&tx, kind, to, local_id, now_ms, 0)?;
        tx.commit()?;
        Ok(self.message(local_id)?.expect("just inserted"))
    }

    /// The first `limit` outbox messages, in send order.
    pub fn outbox(&self, limit: u32) -> Result<Vec<Message>, DbError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE local_id IN (SELECT local_id FROM outbox) ORDER BY local_id LIMIT ?1"
        ))?;
        Ok(stmt
            .query_map(params![limit as i64], row_to_message)?
            .collect::<Result<_, _>>()?)
    }

    /// One message by local id.
    pub fn message(&self, local_id: i64) -> Result<Option<Message>, DbError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE local_id = ?1"),
                params![local_id],
                row_to_message,
            )
            .optional()?)
    }

    /// One message by client message id.
    pub fn message_by_client_id(&self, id: &ClientMsgId) -> Result<Option<Message>, DbError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE client_msg_id = ?1"),
                params![&id.0[..]],
                row_to_message,
            )
            .optional()?)
    }

    /// The server stored an outgoing message: record its ids, leave the outbox, and
    /// count its seq (an entry of our own timeline, or with `log_seq` of a large
    /// group's log) as stored.
    pub fn mark_sent(
        &mut self,
        id: &ClientMsgId,
        server_msg_id: u64,
        seq: u64,
        server_ts: u64,
        log_seq: u64,
    ) -> Result<Option<(i64, MessageStatus, Vec<Message>)>, DbError> {
        let tx = self.conn.transaction()?;
        let local = local_id_of(&tx, id)?;
        let Some(local_id) = local else {
            return Ok(None);
        };
        let group: Option<String> = if log_seq > 0 {
            Some(tx.query_row(
                "SELECT conversation FROM messages WHERE local_id = ?1",
                params![local_id],
                |r| r.get(0),
            )?)
        } else {
            None
        };
        let log = group.as_deref();
        let seq = if log.is_some() { log_seq } else { seq };
        tx.execute(
            "UPDATE messages SET log = ?2 WHERE local_id = ?1",
            params![local_id, log],
        )?;
        // Sent, unless a receipt covering this id already arrived (it can overtake).
        tx.execute(
            "UPDATE messages SET server_msg_id = ?2, seq = ?3, server_ts = ?4,
                 status = CASE WHEN status = ?5 THEN COALESCE((
                     SELECT CASE WHEN ?2 <= c.read_up_to THEN ?8 WHEN ?2 <= c.delivered_up_to THEN ?7 ELSE ?6 END
                     FROM conversations c
                     WHERE c.conv_kind = messages.conv_kind AND c.conversation = messages.conversation), ?6)
                 ELSE status END, error = NULL
             WHERE local_id = ?1",
            params![
                local_id,
                server_msg_id as i64,
                seq as i64,
                server_ts as i64,
                MessageStatus::Pending.code(),
                MessageStatus::Sent.code(),
                MessageStatus::Delivered.code(),
                MessageStatus::Read.code()
            ],
        )?;
        let status = tx.query_row(
            "SELECT status, error FROM messages WHERE local_id = ?1",
            params![local_id],
            |r| Ok(MessageStatus::from_db(r.get(0)?, r.get(1)?)),
        )?;
        tx.execute("DELETE FROM outbox WHERE local_id = ?1", params![local_id])?;
        let before = state(&tx, &log_key("cursor", log))?;
        record_seq(&tx, log, seq)?;
        let released = release(&tx, log, before)?;
        tx.commit()?;
        Ok(Some((local_id, status, released)))
    }

    /// An outgoing message failed for good (or was given up): out of the outbox.
    pub fn mark_failed(&mut self, id: &ClientMsgId, reason: &str) -> Result<Option<i64>, DbError> {
        let tx = self.conn.transaction()?;
        let local = local_id_of(&tx, id)?;
        if let Some(local_id) = local {
            tx.execute(
                "UPDATE messages SET status = ?2, error = ?3 WHERE local_id = ?1 AND status = ?4",
                params![
                    local_id,
                    MessageStatus::Failed {
                        reason: String::new()
                    }
                    .code(),
                    reason,
                    MessageStatus::Pending.code()
                ],
            )?;
            tx.execute("DELETE FROM outbox WHERE local_id = ?1", params![local_id])?;
        }
        tx.commit()?;
        Ok(local)
    }

    /// Puts a failed message back into the outbox (same client message id).
    pub fn retry(&mut self, local_id: i64) -> Result<Option<Message>, DbError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE messages SET status = ?2, error = NULL WHERE local_id = ?1 AND outgoing = 1 AND status = ?3",
            params![local_id, MessageStatus::Pending.code(), MessageStatus::Failed { reason: String::new() }.code()],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT OR IGNORE INTO outbox (local_id) VALUES (?1)",
                params![local_id],
            )?;
        }
        tx.commit()?;
        if n == 1 {
            self.message(local_id)
        } else {
            Ok(None)
        }
    }

    /// Stores timeline entries (a push or a sync page) in one transaction and advances
    /// the cursor. Returns what changed, per entry.
    pub fn apply_entries(&mut self, entries: &[pb::TimelineEntry]) -> Result<Applied, DbError> {
        self.apply_entries_in(None, entries)
    }

    /// Stores entries of a large group's log (a push or a sync page) and advances that
    /// log's cursor.
    pub fn apply_log_entries(
        &mut self,
        group: &str,
        entries: &[pb::TimelineEntry],
    ) -> Result<Applied, DbError> {
        self.apply_entries_in(Some(group), entries)
    }

    fn apply_entries_in(
        &mut self,
        log: Log<'_>,
        entries: &[pb::TimelineEntry],
    ) -> Result<Applied, DbError> {
        let tx = self.conn.transaction()?;
        let before = state(&tx, &log_key("cursor", log))?;
        let mut out = Applied::default();
        for e in entries {
            apply_entry(&tx, &self.user, e, false, log, &mut out)?;
            record_seq(&tx, log, e.seq)?;
        }
        out.new_messages = release(&tx, log, before)?;
        tx.commit()?;
        Ok(out)
    }

    /// A fresh install that does not download the whole timeline: the device starts
    /// holding the timeline at `head` (after the summaries). Older messages come as
    /// history pages. No-op unless the cursor is still 0.
    pub fn start_at(&mut self, head: u64) -> Result<Applied, DbError> {
        self.start_in(None, head)
    }

    /// [`start_at`](Self::start_at) for a large group's log.
    pub fn start_log_at(&mut self, group: &str, head: u64) -> Result<Applied, DbError> {
        self.start_in(Some(group), head)
    }

    fn start_in(&mut self, log: Log<'_>, head: u64) -> Result<Applied, DbError> {
        let tx = self.conn.transaction()?;
        let mut out = Applied::default();
        if state(&tx, &log_key("cursor", log))? == 0 && head > 0 {
            start_log(&tx, log, head)?;
            out.new_messages = release(&tx, log, 0)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Whether this device follows a large group's log (it learned it is a member).
    pub fn follows_log(&self, group: &str) -> Result<bool, DbError> {
        Ok(is_log(&self.conn, group)?)
    }

    /// Highest contiguous seq of a large group's log stored here.
    pub fn log_cursor(&self, group: &str) -> Result<u64, DbError> {
        Ok(state(&self.conn, &log_key("cursor", Some(group)))?)
    }

    /// Highest seq of a large group's log stored here (above a gap, if any).
    pub fn log_max_seq(&self, group: &str) -> Result<u64, DbError> {
        let above: Option<i64> = self.conn.query_row(
            "SELECT MAX(seq) FROM log_received WHERE log = ?1",
            [group],
            |r| r.get(0),
        )?;
        Ok(above.map_or(self.log_cursor(group)?, |s| s as u64))
    }

    /// Applies the large groups' summaries (`Logs`): registers each log, stores the last
    /// messages in it, and takes the unread count at the log's head.
    pub fn apply_log_summaries(
        &mut self,
        groups: &[pb::ConversationSummary],
        now_ms: u64,
    ) -> Result<Applied, DbError> {
        let tx = self.conn.transaction()?;
        let mut out = Applied::default();
        for s in groups {
            let log = Some(s.log.as_str());
            tx.execute(
                "INSERT OR IGNORE INTO logs (grp) VALUES (?1)",
                params![s.log],
            )?;
            let before = state(&tx, &log_key("cursor", log))?;
            apply_summary(&tx, &self.user, s, log, 0, now_ms, &mut out)?;
            out.new_messages.extend(release(&tx, log, before)?);
        }
        tx.commit()?;
        Ok(out)
    }

    /// Stores one history page of a conversation (entries newest first, all below
    /// `before_seq`; `more` = older ones exist) and records the range now held.
    /// History is never announced as new and does not move the cursor.
    pub fn store_history(
        &mut self,
        kind: ConversationKind,
        conversation: &str,
        before_seq: u64,
        entries: &[pb::TimelineEntry],
        more: bool,
    ) -> Result<Applied, DbError> {
        let tx = self.conn.transaction()?;
        let mut out = Applied::default();
        let group =
            (kind == ConversationKind::Group && is_log(&tx, conversation)?).then_some(conversation);
        for e in entries {
            apply_entry(&tx, &self.user, e, true, group, &mut out)?;
        }
        let lo = if more {
            entries.iter().map(|e| e.seq).min()
        } else {
            Some(1)
        };
        let hi = if before_seq == 0 {
            entries.iter().map(|e| e.seq).max()
        } else {
            Some(before_seq - 1)
        };
        if let (Some(lo), Some(hi)) = (lo, hi) {
            add_range(&tx, kind, conversation, lo, hi)?;
        }
        tx.commit()?;
        Ok(out)
    }

    /// Up to `limit` messages of a conversation below the message `before` (newest
    /// first), from the local store, and whether they are known to be complete: the
    /// answer is [`LocalPage::Complete`] when the held ranges prove no message is
    /// missing in between (or the beginning is reached), otherwise the seq to ask the
    /// server for history below.
    pub fn local_history(
        &self,
        kind: ConversationKind,
        conversation: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<LocalPage, DbError> {
        let top = match before {
            Some(local_id) => match self.message(local_id)?.and_then(|m| m.seq) {
                Some(seq) => seq,
                None => return Ok(LocalPage::Complete(vec![], false)),
            },
            None => u64::MAX,
        };
        let messages: Vec<Message> = {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv_kind = ?1 AND conversation = ?2
                 AND seq IS NOT NULL AND seq < ?3 ORDER BY seq DESC LIMIT ?4"
            ))?;
            stmt.query_map(
                params![
                    kind.to_wire(),
                    conversation,
                    top.min(i64::MAX as u64) as i64,
                    limit as i64
                ],
                row_to_message,
            )?
            .collect::<Result<_, _>>()?
        };
        // The highest seq the question is about: just below `before`, or the newest
        // message of the conversation this device knows of.
        let from = if top == u64::MAX {
            messages.first().and_then(|m| m.seq).unwrap_or(0)
        } else {
            top - 1
        };
        if from == 0 {
            return Ok(LocalPage::Fetch { before_seq: 0 });
        }
        let floor = self.covered_floor(kind, conversation, from)?;
        let trusted: Vec<Message> = match floor {
            Some(f) => messages
                .into_iter()
                .filter(|m| m.seq.is_some_and(|s| s >= f))
                .collect(),
            None => vec![],
        };
        let at_beginning = floor.is_some_and(|f| f <= 1);
        if trusted.len() >= limit as usize || at_beginning {
            let complete = at_beginning && trusted.len() < limit as usize;
            return Ok(LocalPage::Complete(trusted, complete));
        }
        Ok(LocalPage::Fetch {
            before_seq: if top == u64::MAX { 0 } else { top },
        })
    }

    /// The lowest seq `f` such that every message of the conversation with
    /// `f <= seq <= top` is held locally (`None` if not even `top` is covered).
    fn covered_floor(
        &self,
        kind: ConversationKind,
        conversation: &str,
        top: u64,
    ) -> Result<Option<u64>, DbError> {
        let mut ranges: Vec<(u64, u64)> = self
            .conn
            .prepare_cached(
                "SELECT lo, hi FROM held_ranges WHERE conv_kind = ?1 AND conversation = ?2",
            )?
            .query_map(params![kind.to_wire(), conversation], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<_, _>>()?;
        // The timeline itself (a large group's: its log): everything in
        // (sync_base, cursor] is held.
        let log = (kind == ConversationKind::Group && is_log(&self.conn, conversation)?)
            .then_some(conversation);
        let base = state(&self.conn, &log_key("sync_base", log))?;
        let cursor = state(&self.conn, &log_key("cursor", log))?;
        if cursor > base {
            ranges.push((base + 1, cursor));
        }
        let (mut cur, mut floor) = (top, None);
        while let Some((lo, _)) = ranges.iter().find(|(lo, hi)| *lo <= cur && cur <= *hi) {
            floor = Some(*lo);
            if *lo <= 1 {
                break;
            }
            cur = lo - 1;
        }
        Ok(floor)
    }

    /// Applies conversation summaries (unread counts) from the server.
    pub fn apply_summaries(
        &mut self,
        summaries: &[pb::ConversationSummary],
        head: u64,
        now_ms: u64,
    ) -> Result<Applied, DbError> {
        let tx = self.conn.transaction()?;
        let before = state(&tx, "cursor")?;
        let mut out = Applied::default();
        for s in summaries {
            apply_summary(&tx, &self.user, s, None, head, now_ms, &mut out)?;
        }
        out.new_messages = release(&tx, None, before)?;
        tx.commit()?;
        Ok(out)
    }

    /// Conversations, most recent activity first.
    pub fn conversations(&self) -> Result<Vec<Conversation>, DbError> {
        self.query_conversations(None)
    }

    /// One conversation. (Looked up by key: the event thread calls this for every
    /// conversation a sync page touches, so it must not scan them all.)
    pub fn conversation(
        &self,
        kind: ConversationKind,
        id: &str,
    ) -> Result<Option<Conversation>, DbError> {
        Ok(self.query_conversations(Some((kind, id)))?.pop())
    }

    fn query_conversations(
        &self,
        only: Option<(ConversationKind, &str)>,
    ) -> Result<Vec<Conversation>, DbError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT c.conv_kind, c.conversation, c.last_local_id, c.last_activity,
                 c.base_unread + (SELECT COUNT(*) FROM messages m WHERE m.conv_kind = c.conv_kind
                     AND m.conversation = c.conversation AND m.outgoing = 0 AND m.seq > c.base_seq),
                 c.latest_seq
             FROM conversations c
             WHERE ?1 IS NULL OR (c.conv_kind = ?1 AND c.conversation = ?2)
             ORDER BY c.last_activity DESC, c.latest_seq DESC",
        )?;
        let (kind, id) = match only {
            Some((k, id)) => (Some(k.to_wire()), Some(id)),
            None => (None, None),
        };
        let rows: Vec<(i32, String, Option<i64>, i64, i64, i64)> = stmt
            .query_map(params![kind, id], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|(kind, id, last, activity, unread, latest)| {
                Ok(Conversation {
                    id,
                    kind: ConversationKind::from_wire(kind),
                    unread: unread as u64,
                    last_message: match last {
                        Some(l) => self.message(l)?,
                        None => None,
                    },
                    last_activity_ms: activity as u64,
                    latest_seq: latest as u64,
                })
            })
            .collect()
    }

    /// Messages of a conversation, newest first, older than `before_local_id` if given.
    /// Order is the server's: (server timestamp, server id); unsent messages last.
    pub fn messages(
        &self,
        kind: ConversationKind,
        conversation: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>, DbError> {
        let order = "COALESCE(server_ts, 9223372036854775807) DESC, COALESCE(server_msg_id, 9223372036854775807) DESC, local_id DESC";
        let anchor = match before {
            Some(b) => self.message(b)?,
            None => None,
        };
        let sql = match &anchor {
            Some(_) => format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv_kind = ?1 AND conversation = ?2
                 AND (COALESCE(server_ts, 9223372036854775807), COALESCE(server_msg_id, 9223372036854775807), local_id) < (?4, ?5, ?6)
                 ORDER BY {order} LIMIT ?3"
            ),
            None => format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv_kind = ?1 AND conversation = ?2 ORDER BY {order} LIMIT ?3"
            ),
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = match anchor {
            Some(a) => stmt.query_map(
                params![
                    kind.to_wire(),
                    conversation,
                    limit as i64,
                    a.server_ts_ms.map_or(i64::MAX, |v| v as i64),
                    a.server_msg_id.map_or(i64::MAX, |v| v as i64),
                    a.local_id
                ],
                row_to_message,
            )?,
            None => stmt.query_map(
                params![kind.to_wire(), conversation, limit as i64],
                row_to_message,
            )?,
        };
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a conversation read up to the newest seq held (unread count to zero) and
    /// queues the mark for the server, which turns it into a timeline event for the
    /// user's other devices. Returns the mark's seq, or `None` if nothing to mark.
    pub fn mark_read(
        &mut self,
        kind: ConversationKind,
        conversation: &str,
    ) -> Result<Option<u64>, DbError> {
        let tx = self.conn.transaction()?;
        let up_to: i64 = tx.query_row(
            "SELECT MAX(COALESCE((SELECT latest_seq FROM conversations WHERE conv_kind = ?1 AND conversation = ?2), 0),
                        COALESCE((SELECT MAX(seq) FROM messages WHERE conv_kind = ?1 AND conversation = ?2), 0))",
            params![kind.to_wire(), conversation],
            |r| r.get(0),
        )?;
        if up_to == 0 {
            return Ok(None);
        }
        let mark = if kind == ConversationKind::Group && is_log(&tx, conversation)? {
            up_to as u64
        } else {
            0
        };
        apply_read_mark(&tx, kind, conversation, mark, up_to as u64, 0)?;
        tx.execute(
            "INSERT INTO pending_reads (conv_kind, conversation, up_to_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (conv_kind, conversation) DO UPDATE SET up_to_seq = MAX(up_to_seq, excluded.up_to_seq)",
            params![kind.to_wire(), conversation, up_to],
        )?;
        tx.commit()?;
        Ok(Some(up_to as u64))
    }

    /// Read marks not yet confirmed by the server.
    pub fn pending_reads(&self) -> Result<Vec<(ConversationKind, String, u64)>, DbError> {
        Ok(self
            .conn
            .prepare_cached("SELECT conv_kind, conversation, up_to_seq FROM pending_reads")?
            .query_map([], |r| {
                Ok((
                    ConversationKind::from_wire(r.get(0)?),
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?
            .collect::<Result<_, _>>()?)
    }

    /// The server refused a read mark for good (e.g. not a member): forget it.
    pub fn drop_pending_read(
        &mut self,
        kind: ConversationKind,
        conversation: &str,
        up_to_seq: u64,
    ) -> Result<(), DbError> {
        self.conn.execute(
            "DELETE FROM pending_reads WHERE conv_kind = ?1 AND conversation = ?2 AND up_to_seq <= ?3",
            params![kind.to_wire(), conversation, up_to_seq as i64],
        )?;
        Ok(())
    }

    /// Total unread count over all conversations (the app badge).
    pub fn total_unread(&self) -> Result<u64, DbError> {
        Ok(self.conversations()?.iter().map(|c| c.unread).sum())
    }

    /// A group's name, as last seen in a group event.
    pub fn group_name(&self, group: &str) -> Result<Option<String>, DbError> {
        Ok(self
            .conn
            .query_row("SELECT name FROM groups WHERE id = ?1", [group], |r| {
                r.get(0)
            })
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

fn local_id_of(tx: &Transaction<'_>, id: &ClientMsgId) -> rusqlite::Result<Option<i64>> {
    tx.query_row(
        "SELECT local_id FROM messages WHERE client_msg_id = ?1",
        params![&id.0[..]],
        |r| r.get(0),
    )
    .optional()
}

fn set_state(tx: &Transaction<'_>, key: &str, value: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO state (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value as i64],
    )?;
    Ok(())
}

/// Records that every message of the conversation with `lo <= seq <= hi` is held,
/// merging with overlapping or adjacent ranges.
fn add_range(
    tx: &Transaction<'_>,
    kind: ConversationKind,
    conversation: &str,
    mut lo: u64,
    mut hi: u64,
) -> rusqlite::Result<()> {
    if lo > hi {
        return Ok(());
    }
    let touching: Vec<(i64, i64)> = tx
        .prepare_cached(
            "SELECT lo, hi FROM held_ranges WHERE conv_kind = ?1 AND conversation = ?2
             AND lo <= ?4 + 1 AND hi + 1 >= ?3",
        )?
        .query_map(
            params![kind.to_wire(), conversation, lo as i64, hi as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    for (l, h) in touching {
        lo = lo.min(l as u64);
        hi = hi.max(h as u64);
        tx.execute(
            "DELETE FROM held_ranges WHERE conv_kind = ?1 AND conversation = ?2 AND lo = ?3",
            params![kind.to_wire(), conversation, l],
        )?;
    }
    tx.execute(
        "INSERT INTO held_ranges (conv_kind, conversation, lo, hi) VALUES (?1, ?2, ?3, ?4)",
        params![kind.to_wire(), conversation, lo as i64, hi as i64],
    )?;
    Ok(())
}

fn state(conn: &Connection, key: &str) -> rusqlite::Result<u64> {
    Ok(conn
        .query_row(
            "SELECT value FROM state WHERE key = ?1",
            params![key],
            |r| r.get::<_, i64>(0),
        )
        .optional()?
        .unwrap_or(0) as u64)
}

/// Which timeline: the user's own (`None`) or a large group's log (`Some(group)`).
type Log<'a> = Option<&'a str>;

/// Starts holding a timeline at `head` (a fresh device that does not download older
/// history, or a member who just joined a large group): cursor and sync base there.
fn start_log(tx: &Transaction<'_>, log: Log<'_>, head: u64) -> rusqlite::Result<()> {
    set_state(tx, &log_key("sync_base", log), head)?;
    match log {
        None => tx.execute("DELETE FROM received_seqs WHERE seq <= ?1", [head as i64])?,
        Some(g) => tx.execute(
            "DELETE FROM log_received WHERE log = ?1 AND seq <= ?2",
            params![g, head as i64],
        )?,
    };
    set_state(tx, &log_key("cursor", log), head.saturating_sub(1))?;
    record_seq(tx, log, head)
}

/// The `state` key of `name` (`cursor`, `sync_base`) for a timeline.
fn log_key(name: &str, log: Log<'_>) -> String {
    match log {
        None => name.to_owned(),
        Some(g) => format!("{name}:{g}"),
    }
}

/// Counts `seq` as stored and advances the cursor over every contiguous stored seq.
fn record_seq(tx: &Transaction<'_>, log: Log<'_>, seq: u64) -> rusqlite::Result<()> {
    let key = log_key("cursor", log);
    let mut cursor = state(tx, &key)?;
    if seq <= cursor {
        return Ok(());
    }
    let (insert, delete) = match log {
        None => (
            "INSERT OR IGNORE INTO received_seqs (seq) VALUES (?1)",
            "DELETE FROM received_seqs WHERE seq = ?1",
        ),
        Some(_) => (
            "INSERT OR IGNORE INTO log_received (seq, log) VALUES (?1, ?2)",
            "DELETE FROM log_received WHERE seq = ?1 AND log = ?2",
        ),
    };
    let bind = |sql: &str, seq: u64| -> rusqlite::Result<usize> {
        match log {
            None => tx.execute(sql, params![seq as i64]),
            Some(g) => tx.execute(sql, params![seq as i64, g]),
        }
    };
    bind(insert, seq)?;
    let start = cursor;
    while bind(delete, cursor + 1)? == 1 {
        cursor += 1;
    }
    if cursor != start {
        set_state(tx, &key, cursor)?;
    }
    Ok(())
}

/// Marks new messages of a timeline up to its cursor as announced and returns them in
/// seq order (`before` is the cursor when the operation began).
fn release(tx: &Transaction<'_>, log: Log<'_>, before: u64) -> rusqlite::Result<Vec<Message>> {
    let cursor = state(tx, &log_key("cursor", log))?;
    if cursor <= before {
        return Ok(vec![]);
    }
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE announced = 0 AND seq <= ?1 AND log IS ?2 ORDER BY seq"
    ))?;
    let released: Vec<Message> = stmt
        .query_map(params![cursor as i64, log], row_to_message)?
        .collect::<Result<_, _>>()?;
    tx.execute(
        "UPDATE messages SET announced = 1 WHERE announced = 0 AND seq <= ?1 AND log IS ?2",
        params![cursor as i64, log],
    )?;
    Ok(released)
}

/// Whether `group` is a large group this device follows by its log.
fn is_log(conn: &Connection, group: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM logs WHERE grp = ?1")?
        .exists(params![group])
}

fn touch_conversation(
    tx: &Transaction<'_>,
    kind: ConversationKind,
    conversation: &str,
    local_id: i64,
    activity: u64,
    seq: u64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO conversations (conv_kind, conversation, last_local_id, last_activity, latest_seq)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (conv_kind, conversation) DO UPDATE SET
             last_local_id = CASE WHEN excluded.last_activity >= last_activity THEN excluded.last_local_id ELSE last_local_id END,
             last_activity = MAX(last_activity, excluded.last_activity),
             latest_seq = MAX(latest_seq, excluded.latest_seq)",
        params![kind.to_wire(), conversation, local_id, activity as i64, seq as i64],
    )?;
    Ok(())
}

fn apply_entry(
    tx: &Transaction<'_>,
    me: &str,
    e: &pb::TimelineEntry,
    historical: bool,
    log: Log<'_>,
    applied: &mut Applied,
) -> Result<(), DbError> {
    match &e.body {
        Some(Body::Message(m)) => {
            let Ok(id) = ClientMsgId::from_slice(&m.client_msg_id) else {
                return Ok(());
            };
            let kind = ConversationKind::from_wire(m.kind);
            let outgoing = m.sender == me;
            let conversation = if outgoing || kind == ConversationKind::Group {
                &m.recipient
            } else {
                &m.sender
            };
            let status = if outgoing {
                MessageStatus::Sent
            } else {
                MessageStatus::Delivered
            };
            // A recall can be applied before a late push of the message it recalls.
            let recalled = m.recalled
                || tx
                    .prepare_cached("SELECT 1 FROM recalled_ids WHERE server_msg_id = ?1")?
                    .exists(params![m.server_msg_id as i64])?;
            let body: &[u8] = if recalled { &[] } else { &m.body };
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO messages (client_msg_id, server_msg_id, conversation, conv_kind, sender, recipient,
                     content_type, body, client_ts, server_ts, seq, outgoing, status, announced, recalled, log)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                params![
                    &id.0[..],
                    m.server_msg_id as i64,
                    conversation,
                    kind.to_wire(),
                    m.sender,
                    m.recipient,
                    if recalled { 0 } else { m.content_type },
                    body,
                    m.client_ts_ms as i64,
                    m.server_ts_ms as i64,
                    e.seq as i64,
                    outgoing,
                    status.code(),
                    // History pages are old news: stored, never announced as new. A
                    // message this user sent from another device is announced (as
                    // outgoing) like any other new message, in timeline order.
                    historical,
                    recalled,
                    log
                ],
            )?;
            if inserted == 1 {
                let local_id = tx.last_insert_rowid();
                touch_conversation(tx, kind, conversation, local_id, m.server_ts_ms, e.seq)?;
                applied.conversations.push((kind, conversation.clone()));
            } else if outgoing {
                // Our own message, already known locally (sent from this device).
                tx.execute(
                    "UPDATE messages SET server_msg_id = ?2, server_ts = ?3, seq = ?4, log = ?5 WHERE client_msg_id = ?1 AND server_msg_id IS NULL",
                    params![&id.0[..], m.server_msg_id as i64, m.server_ts_ms as i64, e.seq as i64, log],
                )?;
                tx.execute("DELETE FROM outbox WHERE local_id = (SELECT local_id FROM messages WHERE client_msg_id = ?1)", params![&id.0[..]])?;
            }
        }
        Some(Body::Receipt(r)) if r.by_user == me => {
            // A read mark made on one of this user's devices (maybe this one).
            let kind = ConversationKind::from_wire(r.kind);
            if r.status == pb::receipt::Status::Read as i32 {
                // A large group's mark counts at a position of its log, the others at
                // this entry's own position.
                let (mark, at) = if r.log.is_empty() {
                    (0, e.seq)
                } else {
                    (r.up_to_seq, r.at_seq)
                };
                apply_read_mark(tx, kind, &r.conversation, mark, at, r.unread)?;
                tx.execute(
                    "DELETE FROM pending_reads WHERE conv_kind = ?1 AND conversation = ?2 AND up_to_seq <= ?3",
                    params![kind.to_wire(), r.conversation, r.up_to_seq as i64],
                )?;
                applied.conversations.push((kind, r.conversation.clone()));
            }
        }
        Some(Body::Receipt(r)) if r.kind == ConversationKind::Group.to_wire() => {
            // A member read our group messages up to an id: count each reader once.
            let prev: i64 = tx
                .query_row(
                    "SELECT up_to FROM group_reads WHERE conversation = ?1 AND reader = ?2",
                    params![r.conversation, r.by_user],
                    |row| row.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let up_to = r.up_to_server_msg_id as i64;
            if up_to > prev {
                tx.execute(
                    "INSERT INTO group_reads (conversation, reader, up_to) VALUES (?1, ?2, ?3)
                     ON CONFLICT (conversation, reader) DO UPDATE SET up_to = excluded.up_to",
                    params![r.conversation, r.by_user, up_to],
                )?;
                let mut stmt = tx.prepare_cached(
                    "UPDATE messages SET read_count = read_count + 1
                     WHERE outgoing = 1 AND conv_kind = ?1 AND conversation = ?2
                       AND server_msg_id > ?3 AND server_msg_id <= ?4 RETURNING local_id",
                )?;
                let ids = stmt
                    .query_map(params![r.kind, r.conversation, prev, up_to], |row| {
                        row.get::<_, i64>(0)
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                applied.updated.extend(ids);
            }
        }
        Some(Body::Receipt(r)) => {
            let new = match pb::receipt::Status::try_from(r.status) {
                Ok(pb::receipt::Status::Read) => MessageStatus::Read,
                _ => MessageStatus::Delivered,
            };
            let kind = ConversationKind::from_wire(r.kind);
            // Statuses only move forward: Sent -> Delivered -> Read.
            let mut stmt = tx.prepare_cached(
                "SELECT local_id FROM messages WHERE outgoing = 1 AND conv_kind = ?1 AND conversation = ?2
                 AND server_msg_id IS NOT NULL AND server_msg_id <= ?3 AND status >= ?4 AND status < ?5",
            )?;
            let ids: Vec<i64> = stmt
                .query_map(
                    params![
                        kind.to_wire(),
                        r.conversation,
                        r.up_to_server_msg_id as i64,
                        MessageStatus::Sent.code(),
                        new.code()
                    ],
                    |row| row.get(0),
                )?
                .collect::<Result<_, _>>()?;
            for id in ids {
                tx.execute(
                    "UPDATE messages SET status = ?2 WHERE local_id = ?1",
                    params![id, new.code()],
                )?;
                applied.status_changes.push((id, new.clone()));
            }
            // Remembered for messages whose SendResult is still on its way.
            let read = new == MessageStatus::Read;
            tx.execute(
                "UPDATE conversations SET delivered_up_to = MAX(delivered_up_to, ?3),
                     read_up_to = CASE WHEN ?4 THEN MAX(read_up_to, ?3) ELSE read_up_to END
                 WHERE conv_kind = ?1 AND conversation = ?2",
                params![
                    kind.to_wire(),
                    r.conversation,
                    r.up_to_server_msg_id as i64,
                    read
                ],
            )?;
        }
        Some(Body::Recall(r)) => {
            tx.execute(
                "INSERT OR IGNORE INTO recalled_ids (server_msg_id) VALUES (?1)",
                params![r.server_msg_id as i64],
            )?;
            let mut stmt = tx.prepare_cached(
                "UPDATE messages SET body = x'', content_type = 0, recalled = 1
                 WHERE server_msg_id = ?1 AND recalled = 0 RETURNING local_id, conv_kind, conversation",
            )?;
            let rows = stmt
                .query_map(params![r.server_msg_id as i64], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i32>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            for (id, kind, conversation) in rows {
                applied.updated.push(id);
                applied
                    .conversations
                    .push((ConversationKind::from_wire(kind), conversation));
            }
        }
        Some(Body::Group(g)) => {
            tx.execute(
                "INSERT INTO groups (id, name) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                params![g.group, g.name],
            )?;
            if g.large && log.is_none() {
                // About this user, in a large group: follow its log from this event on,
                // or stop following it.
                use pb::group_event::Type;
                let joined = matches!(
                    Type::try_from(g.r#type),
                    Ok(Type::Created | Type::MembersAdded)
                );
                if joined {
                    let new = tx.execute(
                        "INSERT OR IGNORE INTO logs (grp) VALUES (?1)",
                        params![g.group],
                    )? == 1;
                    // A (re)joined member starts where they joined, not earlier.
                    if new && state(tx, &log_key("cursor", Some(&g.group)))? < g.log_seq {
                        start_log(tx, Some(&g.group), g.log_seq)?;
                    }
                } else {
                    tx.execute("DELETE FROM logs WHERE grp = ?1", params![g.group])?;
                }
            }
            // A large group's positions are its log's.
            let position = if g.large { g.log_seq } else { e.seq };
            tx.execute(
                "INSERT INTO conversations (conv_kind, conversation, last_activity, latest_seq) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (conv_kind, conversation) DO UPDATE SET latest_seq = MAX(latest_seq, excluded.latest_seq)",
                params![ConversationKind::Group.to_wire(), g.group, tern_protocol::unix_ms() as i64, position as i64],
            )?;
            applied
                .conversations
                .push((ConversationKind::Group, g.group.clone()));
        }
        None => {}
    }
    Ok(())
}

/// Applies one conversation summary taken when the timeline `log` (the user's, or a large
/// group's log) had reached `head` (0 for a log: its head is the summary's `latest_seq`):
/// stores its last messages, and takes the server's unread count as a base at that
/// position.
fn apply_summary(
    tx: &Transaction<'_>,
    me: &str,
    s: &pb::ConversationSummary,
    log: Log<'_>,
    head: u64,
    now_ms: u64,
    out: &mut Applied,
) -> Result<(), DbError> {
    for e in &s.last {
        apply_entry(tx, me, e, false, log, out)?;
        record_seq(tx, log, e.seq)?;
    }
    let kind = ConversationKind::from_wire(s.kind);
    let at = head.max(s.latest_seq);
    tx.execute(
        "INSERT INTO conversations (conv_kind, conversation, last_activity, latest_seq)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (conv_kind, conversation) DO UPDATE SET latest_seq = MAX(latest_seq, excluded.latest_seq)",
        params![kind.to_wire(), s.conversation, now_ms as i64, s.latest_seq as i64],
    )?;
    // The server's unread count is a snapshot at that position (with the user's mark
    // in a log).
    apply_read_mark(tx, kind, &s.conversation, s.read_up_to, at, s.unread)?;
    // The last messages are the conversation's newest: held without a hole.
    if let Some(lo) = s.last.iter().map(|e| e.seq).min() {
        add_range(tx, kind, &s.conversation, lo, at)?;
    }
    out.conversations.push((kind, s.conversation.clone()));
    Ok(())
}

/// Moves a conversation's unread base forward to (`unread` at timeline position `at`):
/// the server's count of unread messages with seq <= `at`. Later messages are counted
/// locally. Only a later position wins, so summaries and read marks can arrive in any
/// order and every device ends with the same count.
///
/// In a large group's log a read mark is not itself an entry, so a mark and a summary
/// can share a position; there the base is ordered by (`mark`, position): the read mark
/// it reflects first (marks only grow, and a base with a later mark was computed after
/// it), then the position. In the user's timeline `mark` is 0 and only the position counts.
fn apply_read_mark(
    tx: &Transaction<'_>,
    kind: ConversationKind,
    conversation: &str,
    mark: u64,
    at: u64,
    unread: u64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO conversations (conv_kind, conversation, last_activity, base_unread, base_seq, base_mark, latest_seq)
         VALUES (?1, ?2, 0, ?3, ?4, ?5, 0)
         ON CONFLICT (conv_kind, conversation) DO UPDATE SET
             base_unread = CASE WHEN (excluded.base_mark, excluded.base_seq) > (base_mark, base_seq)
                 THEN excluded.base_unread ELSE base_unread END,
             base_seq = CASE WHEN (excluded.base_mark, excluded.base_seq) > (base_mark, base_seq)
                 THEN excluded.base_seq ELSE base_seq END,
             base_mark = MAX(base_mark, excluded.base_mark)",
        params![kind.to_wire(), conversation, unread as i64, at as i64, mark as i64],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, from: &str, to: &str, n: u8) -> pb::TimelineEntry {
        pb::TimelineEntry {
            seq,
            body: Some(Body::Message(pb::StoredMessage {
                server_msg_id: 100 + u64::from(n),
                client_msg_id: vec![n; 16].into(),
                sender: from.into(),
                recipient: to.into(),
                kind: 0,
                content_type: 0,
                body: format!("m{n}").into_bytes().into(),
                client_ts_ms: 1,
                server_ts_ms: 1000 + u64::from(n),
                recalled: false,
            })),
        }
    }

    #[test]
    fn cursor_advances_over_contiguous_seqs_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "bob").unwrap();
        let first = db
            .apply_entries(&[entry(1, "alice", "bob", 1), entry(3, "alice", "bob", 3)])
            .unwrap();
        assert_eq!(
            (db.cursor().unwrap(), db.max_seq().unwrap()),
            (1, 3),
            "seq 2 is a gap"
        );
        let seqs = |a: &Applied| {
            a.new_messages
                .iter()
                .map(|m| m.seq.unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(&first), vec![1], "3 waits for the gap");
        let applied = db
            .apply_entries(&[entry(2, "alice", "bob", 2), entry(3, "alice", "bob", 3)])
            .unwrap();
        assert_eq!(db.cursor().unwrap(), 3);
        assert_eq!(seqs(&applied), vec![2, 3], "in order, once");
        assert_eq!(db.message_count().unwrap(), 3);
        let convs = db.conversations().unwrap();
        assert_eq!((convs[0].id.as_str(), convs[0].unread), ("alice", 3));
        let page = db
            .messages(ConversationKind::Direct, "alice", None, 2)
            .unwrap();
        assert_eq!(
            page.iter().map(|m| m.seq.unwrap()).collect::<Vec<_>>(),
            vec![3, 2],
            "newest first"
        );
        let older = db
            .messages(
                ConversationKind::Direct,
                "alice",
                Some(page[1].local_id),
                10,
            )
            .unwrap();
        assert_eq!(
            older.iter().map(|m| m.seq.unwrap()).collect::<Vec<_>>(),
            vec![1]
        );
    }

    #[test]
    fn unread_counts_survive_summary_then_sync_and_mark_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "bob").unwrap();
        db.apply_entries(&[entry(1, "alice", "bob", 1)]).unwrap();
        let summary = pb::ConversationSummary {
            kind: 0,
            conversation: "alice".into(),
            unread: 3,
            latest_seq: 3,
            last: vec![entry(3, "alice", "bob", 3)],
            ..Default::default()
        };
        db.apply_summaries(&[summary], 3, 0).unwrap();
        assert_eq!(
            db.conversations().unwrap()[0].unread,
            3,
            "the server's count"
        );
        db.apply_entries(&[entry(2, "alice", "bob", 2), entry(4, "alice", "bob", 4)])
            .unwrap();
        assert_eq!(
            db.conversations().unwrap()[0].unread,
            4,
            "only seq 4 is new beyond the summary"
        );
        db.mark_read(ConversationKind::Direct, "alice").unwrap();
        assert_eq!(db.conversations().unwrap()[0].unread, 0);
        db.apply_entries(&[entry(5, "alice", "bob", 5)]).unwrap();
        assert_eq!(db.conversations().unwrap()[0].unread, 1);
    }

    #[test]
    fn outbox_lifecycle_and_receipts() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "alice").unwrap();
        let id = ClientMsgId([9; 16]);
        let m = db
            .enqueue(id, "bob", ConversationKind::Direct, 0, b"hi", 5)
            .unwrap();
        assert_eq!(m.status, MessageStatus::Pending);
        assert_eq!(db.outbox(100).unwrap().len(), 1);
        drop(db);
        let mut db = Db::open(dir.path(), "alice").unwrap();
        assert_eq!(
            db.outbox(100).unwrap().len(),
            1,
            "the outbox survives a restart"
        );
        db.mark_sent(&id, 77, 1, 1000, 0).unwrap();
        assert!(db.outbox(100).unwrap().is_empty());
        assert_eq!(
            db.cursor().unwrap(),
            1,
            "our own timeline entry counts as stored"
        );
        let receipt = pb::TimelineEntry {
            seq: 2,
            body: Some(Body::Receipt(pb::Receipt {
                status: 0,
                kind: 0,
                conversation: "bob".into(),
                by_user: "bob".into(),
                up_to_server_msg_id: 77,
                ..Default::default()
            })),
        };
        let applied = db.apply_entries(&[receipt]).unwrap();
        assert_eq!(
            applied.status_changes,
            vec![(m.local_id, MessageStatus::Delivered)]
        );
        let failed_id = ClientMsgId([8; 16]);
        let f = db
            .enqueue(failed_id, "bob", ConversationKind::Direct, 0, b"x", 6)
            .unwrap();
        db.mark_failed(&failed_id, "gave up").unwrap();
        assert!(matches!(
            db.message(f.local_id).unwrap().unwrap().status,
            MessageStatus::Failed { .. }
        ));
        assert!(db.retry(f.local_id).unwrap().is_some());
        assert_eq!(db.outbox(100).unwrap().len(), 1);
    }

    /// Receipts travel in datagrams and SendResults on the stream: a receipt can cover
    /// a message whose SendResult has not arrived yet. The late SendResult must land on
    /// Delivered, not Sent (found by the 2,000-message wire benchmark: 4 stuck at Sent).
    #[test]
    fn a_receipt_that_overtakes_the_send_result_still_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "alice").unwrap();
        let (a, b) = (ClientMsgId([1; 16]), ClientMsgId([2; 16]));
        db.enqueue(a, "bob", ConversationKind::Direct, 0, b"a", 1)
            .unwrap();
        let mb = db
            .enqueue(b, "bob", ConversationKind::Direct, 0, b"b", 2)
            .unwrap();
        db.mark_sent(&a, 10, 1, 1000, 0).unwrap();
        let receipt = pb::TimelineEntry {
            seq: 3,
            body: Some(Body::Receipt(pb::Receipt {
                status: 0,
                kind: 0,
                conversation: "bob".into(),
                by_user: "bob".into(),
                up_to_server_msg_id: 11,
                ..Default::default()
            })),
        };
        db.apply_entries(&[receipt]).unwrap();
        let (local, status, _) = db.mark_sent(&b, 11, 2, 1001, 0).unwrap().unwrap();
        assert_eq!(
            (local, status.clone()),
            (mb.local_id, MessageStatus::Delivered)
        );
        assert_eq!(db.message(mb.local_id).unwrap().unwrap().status, status);
        // A later message not covered by the receipt is only Sent.
        let c = ClientMsgId([3; 16]);
        db.enqueue(c, "bob", ConversationKind::Direct, 0, b"c", 3)
            .unwrap();
        assert_eq!(
            db.mark_sent(&c, 12, 4, 1002, 0).unwrap().unwrap().1,
            MessageStatus::Sent
        );
    }
}
