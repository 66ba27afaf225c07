//! Applying timeline and log entries: the cursor (highest contiguous seq stored), the
//! seqs held above a gap, announcing messages in timeline order, receipts, recalls and
//! group events.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tern_protocol::pb::timeline_entry::Body;
use tern_protocol::{ClientMsgId, pb};

use crate::types::{ConversationKind, Message, MessageStatus};

use super::outbox::settle_sent;
use super::*;

impl Db {
    /// Highest contiguous inbox seq stored.
    pub fn cursor(&self) -> Result<u64, DbError> {
        Ok(state(&self.conn, "cursor")?)
    }

    /// Lowest seq stored above the cursor, if any: the end of the first gap.
    pub fn first_held_seq(&self) -> Result<Option<u64>, DbError> {
        let seq: Option<i64> = one(&self.conn, "SELECT MIN(seq) FROM received_seqs", [], |r| {
            r.get(0)
        })?;
        Ok(seq.map(|s| s as u64))
    }

    /// Highest seq stored at all (above the cursor when there is a gap).
    pub fn max_seq(&self) -> Result<u64, DbError> {
        let above: Option<i64> = one(&self.conn, "SELECT MAX(seq) FROM received_seqs", [], |r| {
            r.get(0)
        })?;
        Ok(above.map_or(self.cursor()?, |s| s as u64))
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

    pub(super) fn apply_entries_in(
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

    pub(super) fn start_in(&mut self, log: Log<'_>, head: u64) -> Result<Applied, DbError> {
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
        let above: Option<i64> = one(
            &self.conn,
            "SELECT MAX(seq) FROM log_received WHERE log = ?1",
            [group],
            |r| r.get(0),
        )?;
        Ok(above.map_or(self.log_cursor(group)?, |s| s as u64))
    }
}

/// Which timeline: the user's own (`None`) or a large group's log (`Some(group)`).
pub(super) type Log<'a> = Option<&'a str>;

/// Starts holding a timeline at `head` (a fresh device that does not download older
/// history, or a member who just joined a large group): cursor and sync base there.
pub(super) fn start_log(tx: &Transaction<'_>, log: Log<'_>, head: u64) -> rusqlite::Result<()> {
    set_state(tx, &log_key("sync_base", log), head)?;
    match log {
        None => exec(
            tx,
            "DELETE FROM received_seqs WHERE seq <= ?1",
            [head as i64],
        )?,
        Some(g) => exec(
            tx,
            "DELETE FROM log_received WHERE log = ?1 AND seq <= ?2",
            params![g, head as i64],
        )?,
    };
    set_state(tx, &log_key("cursor", log), head.saturating_sub(1))?;
    record_seq(tx, log, head)
}

/// The `state` key of `name` (`cursor`, `sync_base`) for a timeline.
pub(super) fn log_key(name: &str, log: Log<'_>) -> String {
    match log {
        None => name.to_owned(),
        Some(g) => format!("{name}:{g}"),
    }
}

/// Counts `seq` as stored and advances the cursor over every contiguous stored seq.
pub(super) fn record_seq(tx: &Transaction<'_>, log: Log<'_>, seq: u64) -> rusqlite::Result<()> {
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
            None => exec(tx, sql, params![seq as i64]),
            Some(g) => exec(tx, sql, params![seq as i64, g]),
        }
    };
    let start = cursor;
    if seq == cursor + 1 {
        // In order (a page, a push without a gap): the cursor moves over it at once.
        cursor = seq;
    } else {
        bind(insert, seq)?;
    }
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
pub(super) fn release(
    tx: &Transaction<'_>,
    log: Log<'_>,
    before: u64,
) -> rusqlite::Result<Vec<Message>> {
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
    exec(
        tx,
        "UPDATE messages SET announced = 1 WHERE announced = 0 AND seq <= ?1 AND log IS ?2",
        params![cursor as i64, log],
    )?;
    Ok(released)
}

/// Whether `group` is a large group this device follows by its log.
pub(super) fn is_log(conn: &Connection, group: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM logs WHERE grp = ?1")?
        .exists(params![group])
}

pub(super) fn apply_entry(
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
            let inserted = exec(
                tx,
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
                // Our own message, already known locally (sent from this device), and
                // its entry came before its SendResult (that answer was lost with a
                // connection): it is stored, so it is Sent (or further) and leaves the
                // outbox, exactly as the SendResult would have done.
                let pending: Option<i64> = one(
                        tx,
                        "SELECT local_id FROM messages WHERE client_msg_id = ?1 AND server_msg_id IS NULL",
                        params![&id.0[..]],
                        |r| r.get(0),
                    )
                    .optional()?;
                if let Some(local_id) = pending {
                    exec(
                        tx,
                        "UPDATE messages SET log = ?2 WHERE local_id = ?1",
                        params![local_id, log],
                    )?;
                    let status = settle_sent(tx, local_id, m.server_msg_id, e.seq, m.server_ts_ms)?;
                    exec(
                        tx,
                        "DELETE FROM outbox WHERE local_id = ?1",
                        params![local_id],
                    )?;
                    applied.status_changes.push((local_id, status));
                }
            } else if let Some(local_id) = one(
                tx,
                // Held without a seq since a rewind (store/restore.rs) and stored again
                // by the restored server: it takes its new place (and counts as unread
                // there, as the restored server counts it), announced once already. A
                // server id another message holds (a server that reuses ids) leaves it
                // as it is, as the insert above ignores such an entry.
                "UPDATE OR IGNORE messages SET seq = ?2, server_msg_id = ?3, server_ts = ?4, log = ?5
                 WHERE client_msg_id = ?1 AND seq IS NULL AND outgoing = 0
                 RETURNING local_id",
                params![
                    &id.0[..],
                    e.seq as i64,
                    m.server_msg_id as i64,
                    m.server_ts_ms as i64,
                    log
                ],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            {
                touch_conversation(tx, kind, conversation, local_id, m.server_ts_ms, e.seq)?;
                applied.conversations.push((kind, conversation.clone()));
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
                exec(
                    tx,
                    "DELETE FROM pending_reads WHERE conv_kind = ?1 AND conversation = ?2 AND up_to_seq <= ?3",
                    params![kind.to_wire(), r.conversation, r.up_to_seq as i64],
                )?;
                applied.conversations.push((kind, r.conversation.clone()));
            }
        }
        Some(Body::Receipt(r)) if r.kind == ConversationKind::Group.to_wire() => {
            // A member read our group messages up to an id: count each reader once.
            let prev: i64 = one(
                tx,
                "SELECT up_to FROM group_reads WHERE conversation = ?1 AND reader = ?2",
                params![r.conversation, r.by_user],
                |row| row.get(0),
            )
            .optional()?
            .unwrap_or(0);
            let up_to = r.up_to_server_msg_id as i64;
            if up_to > prev {
                exec(
                    tx,
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
                exec(
                    tx,
                    "UPDATE messages SET status = ?2 WHERE local_id = ?1",
                    params![id, new.code()],
                )?;
                applied.status_changes.push((id, new.clone()));
            }
            // Remembered for messages whose SendResult is still on its way.
            let read = new == MessageStatus::Read;
            exec(
                tx,
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
            exec(
                tx,
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
            exec(
                tx,
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
                    let new = exec(
                        tx,
                        "INSERT OR IGNORE INTO logs (grp) VALUES (?1)",
                        params![g.group],
                    )? == 1;
                    // A (re)joined member starts where they joined, not earlier.
                    if new && state(tx, &log_key("cursor", Some(&g.group)))? < g.log_seq {
                        start_log(tx, Some(&g.group), g.log_seq)?;
                    }
                } else {
                    exec(tx, "DELETE FROM logs WHERE grp = ?1", params![g.group])?;
                }
            }
            // A large group's positions are its log's.
            let position = if g.large { g.log_seq } else { e.seq };
            exec(
                tx,
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
