//! Conversations: summaries from the server, unread counts (a base at a position plus
//! the incoming messages above it), read marks queued for the server.

use rusqlite::{OptionalExtension, Transaction, params};
use tern_protocol::pb;

use crate::types::{Conversation, ConversationKind};

use super::*;

/// A conversation's unread count (of the row `c`): its base, plus the incoming messages
/// stored above the base's position (see `store/mod.rs`).
pub(super) const UNREAD: &str = "c.base_unread + (SELECT COUNT(*) FROM messages m
     WHERE m.conv_kind = c.conv_kind AND m.conversation = c.conversation
       AND m.outgoing = 0 AND m.seq > c.base_seq)";

impl Db {
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

    pub(super) fn query_conversations(
        &self,
        only: Option<(ConversationKind, &str)>,
    ) -> Result<Vec<Conversation>, DbError> {
        // Two statements, not one with `?1 IS NULL OR ...`: that form scans every
        // conversation even when one is asked for (a catch-up asks for each one a page
        // touched).
        let only_one = match only {
            Some(_) => "WHERE c.conv_kind = ?1 AND c.conversation = ?2",
            None => "ORDER BY c.last_activity DESC, c.latest_seq DESC",
        };
        let sql = format!(
            "SELECT c.conv_kind, c.conversation, c.last_local_id, c.last_activity, {UNREAD},
                 c.latest_seq
             FROM conversations c {only_one}"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        type Row = (i32, String, Option<i64>, i64, i64, i64);
        let row = |r: &rusqlite::Row<'_>| -> rusqlite::Result<Row> {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        };
        let rows: Vec<Row> = match only {
            Some((k, id)) => stmt.query_map(params![k.to_wire(), id], row)?,
            None => stmt.query_map([], row)?,
        }
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
}

pub(super) fn touch_conversation(
    tx: &Transaction<'_>,
    kind: ConversationKind,
    conversation: &str,
    local_id: i64,
    activity: u64,
    seq: u64,
) -> rusqlite::Result<()> {
    exec(
        tx,
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

/// Applies one conversation summary taken when the timeline `log` (the user's, or a large
/// group's log) had reached `head` (0 for a log: its head is the summary's `latest_seq`):
/// stores its last messages, and takes the server's unread count as a base at that
/// position.
pub(super) fn apply_summary(
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
pub(super) fn apply_read_mark(
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
