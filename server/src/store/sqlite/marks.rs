//! Read marks, recalls and history pages.
//!
//! A read mark is kept per (user, conversation) as a seq of the user's own timeline:
//! "everything in this conversation up to seq N is read". Because every device of a
//! user holds the same timeline, a seq means the same thing on all of them; the mark is
//! also appended to the timeline as a READ receipt with `up_to_seq`, so each device
//! applies it (and reaches the same unread count) whatever order it learns things in.
//! The server's own unread count is recomputed from the mark, never decremented.
//!
//! A recall erases the message body in place (so neither sync nor history can return
//! it again) and appends a recall entry to the timeline of every current participant.

use rusqlite::{Connection, OptionalExtension, params};
use tern_protocol::page::PageBudget;
use tern_protocol::pb;

use crate::store::{Fanout, log_key, rules};

use super::tx::Tx;
use super::{
    StoreError, groups, timeline,
    timeline::{
        CONVERSATION_ENTRIES, ENTRY_COLUMNS, append_event, append_receipt, head_seq, row_to_entry,
    },
};

pub(super) fn mark_read(
    tx: &Tx<'_>,
    user: &str,
    kind: pb::ConversationKind,
    conversation: &str,
    up_to_seq: u64,
    group_receipts_max: usize,
) -> Result<Vec<Fanout>, StoreError> {
    let kind_i = kind as i32;
    if kind == pb::ConversationKind::Group && groups::is_large(tx, conversation)? {
        return mark_read_log(tx, user, conversation, up_to_seq);
    }
    // Only a conversation the user has: a mark on any other name is a no-op (it would
    // otherwise store a row and a receipt for nothing).
    let known = tx
        .prepare_cached(
            "SELECT 1 FROM conversations WHERE user = ?1 AND conv_kind = ?2 AND conversation = ?3",
        )?
        .exists(params![user, kind_i, conversation])?;
    if !known {
        return Ok(vec![]);
    }
    let up_to = up_to_seq.min(head_seq(tx, user)?);
    let prev = read_mark(tx, user, kind_i, conversation)?;
    if up_to <= prev {
        return Ok(vec![]);
    }
    set_read_mark(tx, user, kind_i, conversation, up_to)?;
    let unread: i64 = tx
        .prepare_cached(&format!(
            "SELECT COUNT(*) FROM {CONVERSATION_ENTRIES} AND t.seq > ?4 AND m.sender != ?1"
        ))?
        .query_row(params![user, kind_i, conversation, up_to as i64], |r| {
            r.get(0)
        })?;
    tx.prepare_cached(
        "UPDATE conversations SET unread = ?4 WHERE user = ?1 AND conv_kind = ?2 AND conversation = ?3",
    )?
    .execute(params![user, kind_i, conversation, unread])?;
    // The newest message read now, per sender, among those not read before.
    let newly_read: Vec<(String, i64)> = tx
        .prepare_cached(&format!(
            "SELECT m.sender, MAX(m.id) FROM {CONVERSATION_ENTRIES}
                   AND t.seq > ?4 AND t.seq <= ?5 AND m.sender != ?1
                 GROUP BY m.sender"
        ))?
        .query_map(
            params![user, kind_i, conversation, prev as i64, up_to as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    let up_to_msg = newly_read.iter().map(|(_, id)| *id).max().unwrap_or(0) as u64;
    let mut fanout = vec![append_receipt(
        tx,
        user,
        rules::own_read_mark(kind, user, conversation, up_to_msg, up_to, unread as u64),
    )?];
    let members = match kind {
        pb::ConversationKind::Group => groups::members(tx, conversation)?.map(|m| m.len()),
        _ => None,
    };
    if rules::tells_senders(kind, members, group_receipts_max) {
        for (sender, id) in newly_read {
            let receipt = rules::read_receipt_to_sender(kind, user, conversation, id as u64);
            fanout.push(append_receipt(tx, &sender, receipt)?);
        }
    }
    Ok(fanout)
}

/// Incoming messages of a large group's log above `mark` (the user's unread count there).
fn log_unread(conn: &Connection, user: &str, group: &str, mark: u64) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT COUNT(*) FROM timeline t JOIN messages m ON m.id = t.message_id
             WHERE t.user = ?1 AND t.seq > ?2 AND m.sender != ?3",
        )?
        .query_row(params![log_key(group), mark as i64, user], |r| {
            r.get::<_, i64>(0)
        })? as u64)
}

/// The log position where `user` joined large group `group` (0 if unknown).
fn joined_at(conn: &Connection, group: &str, user: &str) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached("SELECT seq FROM log_joins WHERE grp = ?1 AND user = ?2")?
        .query_row(params![group, user], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

fn read_mark(
    conn: &Connection,
    user: &str,
    kind: i32,
    conversation: &str,
) -> Result<u64, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT up_to_seq FROM read_marks WHERE user = ?1 AND conv_kind = ?2 AND conversation = ?3",
        )?
        .query_row(params![user, kind, conversation], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

fn set_read_mark(
    tx: &Tx<'_>,
    user: &str,
    kind: i32,
    conversation: &str,
    up_to: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO read_marks (user, conv_kind, conversation, up_to_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user, conv_kind, conversation) DO UPDATE SET up_to_seq = excluded.up_to_seq",
    )?
    .execute(params![user, kind, conversation, up_to as i64])?;
    Ok(())
}

/// A read mark in a large group: positions are in the group's log. The mark goes to the
/// user's own timeline (their other devices) with the count at the log's head; senders
/// get no receipts (a large group has no read counts).
fn mark_read_log(
    tx: &Tx<'_>,
    user: &str,
    group: &str,
    up_to_seq: u64,
) -> Result<Vec<Fanout>, StoreError> {
    let kind = pb::ConversationKind::Group as i32;
    if !groups::is_member(tx, group, user)? {
        return Err(StoreError::NotAllowed("not a member of the group"));
    }
    let head = head_seq(tx, &log_key(group))?;
    let up_to = up_to_seq.min(head);
    if up_to <= read_mark(tx, user, kind, group)? {
        return Ok(vec![]);
    }
    set_read_mark(tx, user, kind, group, up_to)?;
    Ok(vec![append_receipt(
        tx,
        user,
        pb::Receipt {
            status: pb::receipt::Status::Read as i32,
            kind,
            conversation: group.to_owned(),
            by_user: user.to_owned(),
            up_to_seq: up_to,
            unread: log_unread(tx, user, group, up_to.max(joined_at(tx, group, user)?))?,
            log: group.to_owned(),
            at_seq: head,
            ..Default::default()
        },
    )?])
}

/// The large groups `user` is in: head, unread at the head and the last messages of
/// each log, as conversation summaries in log positions.
pub(super) fn logs(
    conn: &Connection,
    user: &str,
    last_messages: u32,
) -> Result<(Vec<pb::ConversationSummary>, bool), StoreError> {
    let kind = pb::ConversationKind::Group as i32;
    let groups: Vec<String> = conn
        .prepare_cached(
            "SELECT gm.grp FROM group_members gm JOIN groups g ON g.id = gm.grp
             WHERE gm.user = ?1 AND g.large ORDER BY gm.grp",
        )?
        .query_map(params![user], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(groups.len());
    // One byte budget for the answer: every group's position first, then the last
    // messages while they fit (a group whose messages did not fit has fewer in `last`;
    // its members get them by syncing the log).
    let mut budget = PageBudget::new();
    let kept = groups
        .iter()
        .take_while(|g| budget.take(g.len() * 2 + 48))
        .count();
    let more = kept < groups.len();
    for group in groups.into_iter().take(kept) {
        let head = head_seq(conn, &log_key(&group))?;
        let mark = read_mark(conn, user, kind, &group)?;
        let joined_at = joined_at(conn, &group, user)?;
        let restored_seq = timeline::restore_point(conn, &log_key(&group))?;
        let (mut last, _) = history_of(conn, &log_key(&group), kind, &group, 0, last_messages)?;
        // What a member sees by default starts where they joined.
        last.retain(|e| e.seq > joined_at);
        last.retain(|e| budget.take_msg(e));
        last.reverse();
        out.push(pb::ConversationSummary {
            kind,
            conversation: group.clone(),
            unread: log_unread(conn, user, &group, mark.max(joined_at))?,
            latest_seq: head,
            last,
            log: group,
            read_up_to: mark,
            joined_at,
            restored_seq,
        });
    }
    Ok((out, more))
}

pub(super) fn recall(
    tx: &Tx<'_>,
    user: &str,
    server_msg_id: u64,
    window_ms: u64,
) -> Result<Vec<Fanout>, StoreError> {
    let row: Option<(String, String, i32, i64, bool)> = tx
        .prepare_cached(
            "SELECT sender, recipient, kind, server_ts, recalled FROM messages WHERE id = ?1",
        )?
        .query_row(params![server_msg_id as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()?;
    let Some((sender, recipient, kind, ts, recalled)) = row else {
        return Err(StoreError::MessageNotFound);
    };
    if sender != user {
        return Err(StoreError::MessageNotFound);
    }
    if recalled {
        return Ok(vec![]); // a retried recall: already done
    }
    if tern_protocol::unix_ms().saturating_sub(ts as u64) > window_ms {
        return Err(StoreError::RecallExpired);
    }
    tx.prepare_cached(
        "UPDATE messages SET body = x'', content_type = 0, recalled = 1 WHERE id = ?1",
    )?
    .execute(params![server_msg_id as i64])?;
    let recall_body =
        |conversation: &str| rules::recall_entry(server_msg_id, kind, conversation, user);
    if kind == pb::ConversationKind::Group as i32 && groups::is_large(tx, &recipient)? {
        // One entry in the group's log; every member (the sender too) applies it.
        return Ok(vec![groups::append_to_log(
            tx,
            &recipient,
            recall_body(&recipient),
        )?]);
    }
    let members = if kind == pb::ConversationKind::Group as i32 {
        groups::members(tx, &recipient)?.unwrap_or_default()
    } else {
        vec![]
    };
    let holders = rules::recall_holders(kind, &sender, &recipient, members);
    let mut fanout = Vec::with_capacity(holders.len());
    for (holder, conversation) in holders {
        fanout.push(append_event(
            tx,
            &holder,
            kind,
            &conversation,
            recall_body(&conversation),
        )?);
    }
    Ok(fanout)
}

pub(super) fn history(
    conn: &Connection,
    user: &str,
    kind: pb::ConversationKind,
    conversation: &str,
    before_seq: u64,
    limit: u32,
) -> Result<(Vec<pb::TimelineEntry>, bool), StoreError> {
    if kind == pb::ConversationKind::Group && groups::is_large(conn, conversation)? {
        // A large group's history is its log (positions in the log), for members.
        if !groups::is_member(conn, conversation, user)? {
            return Err(StoreError::NotAllowed("not a member of the group"));
        }
        return history_of(
            conn,
            &log_key(conversation),
            kind as i32,
            conversation,
            before_seq,
            limit,
        );
    }
    history_of(conn, user, kind as i32, conversation, before_seq, limit)
}

/// Message entries of `conversation` in the timeline `owner` below `before_seq`.
fn history_of(
    conn: &Connection,
    owner: &str,
    kind: i32,
    conversation: &str,
    before_seq: u64,
    limit: u32,
) -> Result<(Vec<pb::TimelineEntry>, bool), StoreError> {
    let before = if before_seq == 0 {
        i64::MAX
    } else {
        before_seq as i64
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM {CONVERSATION_ENTRIES} AND t.seq < ?4
         ORDER BY t.seq DESC LIMIT ?5"
    ))?;
    // Read row by row up to the page's byte budget (see `tern_protocol::page`).
    let mut budget = PageBudget::new();
    let mut entries = Vec::new();
    let mut more = false;
    for row in stmt.query_map(
        params![owner, kind, conversation, before, limit as i64 + 1],
        row_to_entry,
    )? {
        let entry = row??;
        if entries.len() == limit as usize || !budget.take_msg(&entry) {
            more = true;
            break;
        }
        entries.push(entry);
    }
    Ok((entries, more))
}
