//! History: the messages of a conversation in the server's order, the held seq ranges
//! that prove a local page complete, and pages fetched from the server.

use rusqlite::{Transaction, params};
use tern_protocol::pb;

use crate::types::{ConversationKind, Message};

use super::*;

impl Db {
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
    pub(super) fn covered_floor(
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

    /// Messages of a conversation, newest first, older than `before_local_id` if given.
    /// Order is the server's store order (server message id, which never goes back,
    /// whatever the server's clock does); unsent messages last, in the order written.
    pub fn messages(
        &self,
        kind: ConversationKind,
        conversation: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Message>, DbError> {
        let order = "COALESCE(server_msg_id, 9223372036854775807) DESC, local_id DESC";
        let anchor = match before {
            Some(b) => self.message(b)?,
            None => None,
        };
        let sql = match &anchor {
            Some(_) => format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv_kind = ?1 AND conversation = ?2
                 AND (COALESCE(server_msg_id, 9223372036854775807), local_id) < (?4, ?5)
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
}

/// Records that every message of the conversation with `lo <= seq <= hi` is held,
/// merging with overlapping or adjacent ranges.
pub(super) fn add_range(
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
