//! Timelines: per-user contiguous seqs, storing a message once with an entry in every
//! timeline it concerns, delivery cursors and receipts, and the reads of pages and
//! summaries.

use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, params};
use tern_protocol::page::PageBudget;
use tern_protocol::pb;

use super::tx::Tx;
use super::{StoreError, groups, order, outbox};
use crate::store::{Fanout, NewMessage, StoredMessage, SummaryPage, TimelinePage, log_key, rules};

pub(super) fn next_seq(tx: &Tx<'_>, user: &str) -> Result<u64, StoreError> {
    // The head the writer last wrote, moved on only from that value: a stale one (which
    // the writer's bookkeeping should never let through) moves nothing and is read back.
    if let Some(head) = tx.heads().get(user) {
        let seq = head + 1;
        let moved = tx
            .prepare_cached("UPDATE users SET head_seq = ?2 WHERE user = ?1 AND head_seq = ?3")?
            .execute(params![user, seq as i64, head as i64])?;
        if moved == 1 {
            tx.heads().set(user, seq);
            return Ok(seq);
        }
        // Read back below, and the read replaces the cached head.
        tracing::warn!(%user, "the writer's cached head was stale; read back");
    }
    // An UPDATE and a SELECT, not one upsert with `RETURNING`: SQLite buffers
    // `RETURNING` rows in an ephemeral table it opens and frees per statement. The
    // upsert was a third of the writer's instructions per message; this takes 18 % off
    // them (callgrind, docs/bench/analysis.md, "Cost per message: ninth round").
    let bumped = tx
        .prepare_cached("UPDATE users SET head_seq = head_seq + 1 WHERE user = ?1")?
        .execute(params![user])?;
    let seq = if bumped == 0 {
        tx.prepare_cached("INSERT INTO users (user, head_seq) VALUES (?1, 1)")?
            .execute(params![user])?;
        1
    } else {
        head_seq(tx, user)?
    };
    tx.heads().set(user, seq);
    Ok(seq)
}

pub(super) fn head_seq(conn: &Connection, user: &str) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT head_seq FROM users WHERE user = ?1")?
        .query_row(params![user], |r| r.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

/// The head of `owner`'s timeline at the last restore (0: never restored).
pub(super) fn restore_point(conn: &Connection, owner: &str) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM restore_points WHERE owner = ?1")?
        .query_row(params![owner], |r| r.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

/// Appends an entry that is neither a message nor a receipt (a recall, a group event)
/// to `user`'s timeline and returns it.
pub(super) fn append_event(
    tx: &Tx<'_>,
    user: &str,
    kind: i32,
    conversation: &str,
    body: pb::timeline_entry::Body,
) -> Result<Fanout, StoreError> {
    let seq = next_seq(tx, user)?;
    insert_event(tx, user, seq, kind, conversation, body)
}

/// Writes an event entry at a seq already taken with [`next_seq`] (for an event that
/// must carry its own position).
pub(super) fn insert_event(
    tx: &Tx<'_>,
    user: &str,
    seq: u64,
    kind: i32,
    conversation: &str,
    body: pb::timeline_entry::Body,
) -> Result<Fanout, StoreError> {
    let mut entry = pb::TimelineEntry {
        seq: 0,
        body: Some(body),
    };
    tx.prepare_cached("INSERT INTO timeline (user, seq, conv_kind, conversation, event) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![user, seq as i64, kind, conversation, entry.encode_to_vec()])?;
    entry.seq = seq;
    Ok(Fanout {
        user: user.to_owned(),
        entry,
        log: None,
    })
}

/// Appends a receipt to `user`'s timeline and returns it.
pub(super) fn append_receipt(
    tx: &Tx<'_>,
    user: &str,
    receipt: pb::Receipt,
) -> Result<Fanout, StoreError> {
    let seq = next_seq(tx, user)?;
    append_entry(
        tx,
        user,
        seq,
        receipt.kind,
        &receipt.conversation,
        None,
        Some(&receipt.encode_to_vec()),
        0,
    )?;
    Ok(Fanout {
        user: user.to_owned(),
        log: None,
        entry: pb::TimelineEntry {
            seq,
            body: Some(pb::timeline_entry::Body::Receipt(receipt)),
        },
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn append_entry(
    tx: &Tx<'_>,
    user: &str,
    seq: u64,
    kind: i32,
    conversation: &str,
    message_id: Option<u64>,
    receipt: Option<&[u8]>,
    unread: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO timeline (user, seq, conv_kind, conversation, message_id, receipt) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
.execute(params![user, seq as i64, kind, conversation, message_id.map(|i| i as i64), receipt],
    )?;
    if message_id.is_some() {
        tx.prepare_cached("INSERT INTO conversations (user, conv_kind, conversation, latest_seq, unread) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (user, conv_kind, conversation)
             DO UPDATE SET latest_seq = excluded.latest_seq, unread = unread + excluded.unread")?
.execute(params![user, kind, conversation, seq as i64, unread as i64],
        )?;
    }
    Ok(())
}

pub(super) fn store_message(
    tx: &Tx<'_>,
    m: &NewMessage,
    last_ts: &mut u64,
) -> Result<StoredMessage, StoreError> {
    let existing: Option<(i64, i64, i64, i32, String)> = tx
        .prepare_cached("SELECT id, sender_seq, server_ts, kind, recipient FROM messages WHERE sender = ?1 AND client_msg_id = ?2")?
.query_row(params![m.sender, &m.client_msg_id.0[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    if let Some((id, seq, ts, kind, recipient)) = existing {
        // For a large group's message `sender_seq` holds its seq in the group's log.
        let in_log =
            kind == pb::ConversationKind::Group as i32 && groups::is_large(tx, &recipient)?;
        return Ok(StoredMessage {
            server_msg_id: id as u64,
            sender_seq: if in_log { 0 } else { seq as u64 },
            log_seq: if in_log { seq as u64 } else { 0 },
            server_ts_ms: ts as u64,
            duplicate: true,
            fanout: vec![],
        });
    }
    if m.send_seq > 0 {
        // Before any other check: a message that arrives ahead of a missing one is not
        // judged yet. (For a refusal below, the writer takes the number for refusals
        // that are for good, see `writer::after_refusal`.)
        order::expect_send_seq(tx, &m.sender, &m.device, m.send_seq)?;
    }
    let to_group = m.kind == pb::ConversationKind::Group;
    let large = to_group && groups::is_large(tx, &m.recipient)?;
    if to_group {
        // Membership is checked inside the write, so it is ordered with every
        // membership change: a member removed before this send cannot send into it.
        if !groups::exists(tx, &m.recipient)? {
            return Err(StoreError::GroupNotFound);
        }
        if !m.from_backend && !groups::is_member(tx, &m.recipient, &m.sender)? {
            return Err(StoreError::NotAllowed("not a member of the group"));
        }
    }
    if m.require_known_recipient && !to_group {
        let known = tx
            .prepare_cached("SELECT 1 FROM users WHERE user = ?1")?
            .query_row(params![m.recipient], |_| Ok(()))
            .optional()?;
        if known.is_none() {
            return Err(StoreError::UnknownRecipient);
        }
    }
    // Every refusal is above this line: nothing is written before the message is
    // accepted, so the writer runs it without a savepoint (`writer::needs_savepoint`).
    if m.send_seq > 0 {
        order::set_send_seq(tx, &m.sender, &m.device, m.send_seq)?;
    }
    let ts = tern_protocol::unix_ms().max(*last_ts);
    *last_ts = ts;
    let kind = m.kind as i32;
    // A large group's message goes to the group's log only (read diffusion); the seq
    // column keeps its log seq. Otherwise the sender's timeline gets the first entry.
    let sender_seq = if large {
        next_seq(tx, &log_key(&m.recipient))?
    } else {
        next_seq(tx, &m.sender)?
    };
    tx.prepare_cached("INSERT INTO messages (sender, client_msg_id, recipient, kind, content_type, body, client_ts, server_ts, sender_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?
.execute(params![
            m.sender,
            &m.client_msg_id.0[..],
            m.recipient,
            kind,
            m.content_type,
            &m.body[..],
            m.client_ts_ms as i64,
            ts as i64,
            sender_seq as i64
        ],
    )?;
    let id = tx.last_insert_rowid() as u64;
    let stored = m.stored(id, ts);
    if m.to_service {
        outbox::enqueue(tx, "c2s", &crate::store::ops::c2s_payload(&stored))?;
    }
    let entry = |seq| pb::TimelineEntry {
        seq,
        body: Some(pb::timeline_entry::Body::Message(stored.clone())),
    };
    if large {
        tx.prepare_cached(
            "INSERT INTO timeline (user, seq, conv_kind, conversation, message_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![log_key(&m.recipient), sender_seq as i64, kind, m.recipient, id as i64])?;
        return Ok(StoredMessage {
            server_msg_id: id,
            sender_seq: 0,
            log_seq: sender_seq,
            server_ts_ms: ts,
            duplicate: false,
            fanout: vec![groups::log_fanout(&m.recipient, entry(sender_seq))],
        });
    }
    append_entry(
        tx,
        &m.sender,
        sender_seq,
        kind,
        &m.recipient,
        Some(id),
        None,
        0,
    )?;
    let mut fanout = vec![Fanout {
        user: m.sender.clone(),
        entry: entry(sender_seq),
        log: None,
    }];
    if to_group {
        // Write diffusion: one entry in every member's timeline (the message row is
        // shared); the conversation is the group for everyone. Three set statements
        // (next seqs, entries, conversation rows) rather than three per member: the
        // per-row round trips through the SQLite API were most of a big group's cost.
        let seqs: Vec<(String, i64)> = tx
            .prepare_cached(
                "INSERT INTO users (user, head_seq)
                 SELECT user, 1 FROM group_members WHERE grp = ?1 AND user != ?2
                 ON CONFLICT (user) DO UPDATE SET head_seq = head_seq + 1
                 RETURNING user, head_seq",
            )?
            .query_map(params![m.recipient, m.sender], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        for (user, seq) in &seqs {
            tx.heads().set(user, *seq as u64);
        }
        tx.prepare_cached(
            "INSERT INTO timeline (user, seq, conv_kind, conversation, message_id)
             SELECT gm.user, u.head_seq, ?3, ?1, ?4 FROM group_members gm JOIN users u ON u.user = gm.user
             WHERE gm.grp = ?1 AND gm.user != ?2",
        )?
        .execute(params![m.recipient, m.sender, kind, id as i64])?;
        tx.prepare_cached(
            "INSERT INTO conversations (user, conv_kind, conversation, latest_seq, unread)
             SELECT gm.user, ?3, ?1, u.head_seq, 1 FROM group_members gm JOIN users u ON u.user = gm.user
             WHERE gm.grp = ?1 AND gm.user != ?2
             ON CONFLICT (user, conv_kind, conversation)
             DO UPDATE SET latest_seq = excluded.latest_seq, unread = unread + 1",
        )?
        .execute(params![m.recipient, m.sender, kind])?;
        fanout.extend(seqs.into_iter().map(|(user, seq)| Fanout {
            user,
            entry: entry(seq as u64),
            log: None,
        }));
    } else if m.recipient != m.sender {
        let seq = next_seq(tx, &m.recipient)?;
        append_entry(tx, &m.recipient, seq, kind, &m.sender, Some(id), None, 1)?;
        fanout.push(Fanout {
            user: m.recipient.clone(),
            entry: entry(seq),
            log: None,
        });
    }
    Ok(StoredMessage {
        server_msg_id: id,
        sender_seq,
        log_seq: 0,
        server_ts_ms: ts,
        duplicate: false,
        fanout,
    })
}

pub(super) fn ack_delivered(
    tx: &Tx<'_>,
    user: &str,
    device: &str,
    seq: u64,
) -> Result<Vec<Fanout>, StoreError> {
    // Three statements where the cursor moves (they were five: the user's row read once
    // for its head and its cursor, each cursor moved by an UPDATE that says whether it
    // moved).
    let Some((head, user_seq)) = tx
        .prepare_cached("SELECT head_seq, delivered_seq FROM users WHERE user = ?1")?
        .query_row(params![user], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .optional()?
    else {
        return Ok(vec![]);
    };
    let seq = seq.min(head as u64);
    if seq == 0 {
        return Ok(vec![]);
    }
    let moved = tx
        .prepare_cached(
            "UPDATE devices SET delivered_seq = ?3
             WHERE user = ?1 AND device = ?2 AND delivered_seq < ?3",
        )?
        .execute(params![user, device, seq as i64])?;
    if moved == 0 {
        // No row yet (a device's first ACK), or the cursor is already at or past `seq`.
        let added = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO devices (user, device, delivered_seq) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![user, device, seq as i64])?;
        if added == 0 {
            return Ok(vec![]);
        }
    }
    // Receipts only for what no device of this user had acknowledged before.
    if seq <= user_seq as u64 {
        return Ok(vec![]);
    }
    tx.prepare_cached("UPDATE users SET delivered_seq = ?2 WHERE user = ?1")?
        .execute(params![user, seq as i64])?;
    // The newest message of each other sender among the entries just acknowledged.
    // Two single-table statements, not one join: SQLite (bundled, STAT4) re-prepares a
    // join of timeline and messages at every new binding, which was a fifth of the
    // writer thread's time under load (docs/bench/analysis.md, "Cost per message").
    let mut entries = tx.prepare_cached(
        "SELECT message_id FROM timeline
         WHERE user = ?1 AND seq > ?2 AND seq <= ?3 AND conv_kind = ?4 AND message_id IS NOT NULL",
    )?;
    let mut sender_of = tx.prepare_cached("SELECT sender FROM messages WHERE id = ?1")?;
    let mut senders: std::collections::BTreeMap<String, i64> = Default::default();
    let mut rows = entries.query(params![
        user,
        user_seq,
        seq as i64,
        pb::ConversationKind::Direct as i32
    ])?;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let sender: String = sender_of.query_row(params![id], |r| r.get(0))?;
        if sender != user {
            let newest = senders.entry(sender).or_insert(id);
            *newest = (*newest).max(id);
        }
    }
    let mut fanout = vec![];
    for (sender, up_to) in senders {
        fanout.push(append_receipt(
            tx,
            &sender,
            rules::delivered_receipt(user, up_to as u64),
        )?);
    }
    Ok(fanout)
}

/// One conversation's entries, as every read of a conversation selects them (a page of
/// it, the summaries' last messages, unread counts, read receipts): message entries
/// only, through `timeline_by_conversation`, which holds those alone (migration 0006:
/// receipts and events are not in it). The index is named: without statistics SQLite
/// chose the timeline's primary key for these reads and walked the owner's whole
/// timeline back to the conversation's entries, work in proportion to the timeline,
/// not to the answer. Binds ?1 the timeline's owner, ?2 the conversation kind, ?3 the
/// conversation; a query adds its own terms with `AND`.
pub(super) const CONVERSATION_ENTRIES: &str = "timeline t INDEXED BY timeline_by_conversation
     JOIN messages m ON m.id = t.message_id
     WHERE t.user = ?1 AND t.conv_kind = ?2 AND t.conversation = ?3 AND t.message_id IS NOT NULL";

pub(super) const ENTRY_COLUMNS: &str =
    "t.seq, t.receipt, m.id, m.client_msg_id, m.sender, m.recipient, m.kind, m.content_type,
     m.body, m.client_ts, m.server_ts, t.event, m.recalled";

pub(super) fn row_to_entry(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<pb::TimelineEntry, StoreError>> {
    let seq: i64 = r.get(0)?;
    let receipt: Option<Vec<u8>> = r.get(1)?;
    if let Some(event) = r.get::<_, Option<Vec<u8>>>(11)? {
        return Ok(match pb::TimelineEntry::decode(&event[..]) {
            Ok(e) => Ok(pb::TimelineEntry {
                seq: seq as u64,
                body: e.body,
            }),
            Err(e) => Err(StoreError::Corrupt(format!("event at seq {seq}: {e}"))),
        });
    }
    let body = match receipt {
        Some(bytes) => match pb::Receipt::decode(&bytes[..]) {
            Ok(rc) => pb::timeline_entry::Body::Receipt(rc),
            Err(e) => {
                return Ok(Err(StoreError::Corrupt(format!(
                    "receipt at seq {seq}: {e}"
                ))));
            }
        },
        None => pb::timeline_entry::Body::Message(pb::StoredMessage {
            server_msg_id: r.get::<_, i64>(2)? as u64,
            client_msg_id: r.get::<_, Vec<u8>>(3)?.into(),
            sender: r.get(4)?,
            recipient: r.get(5)?,
            kind: r.get(6)?,
            content_type: r.get(7)?,
            body: r.get::<_, Vec<u8>>(8)?.into(),
            client_ts_ms: r.get::<_, i64>(9)? as u64,
            server_ts_ms: r.get::<_, i64>(10)? as u64,
            recalled: r.get(12)?,
        }),
    };
    Ok(Ok(pb::TimelineEntry {
        seq: seq as u64,
        body: Some(body),
    }))
}

pub(super) fn read_timeline(
    conn: &Connection,
    user: &str,
    after: u64,
    until: u64,
    limit: u32,
) -> Result<TimelinePage, StoreError> {
    let head = head_seq(conn, user)?;
    let upper = if until == 0 { head } else { until.min(head) };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM timeline t LEFT JOIN messages m ON m.id = t.message_id
         WHERE t.user = ?1 AND t.seq > ?2 AND t.seq <= ?3 ORDER BY t.seq LIMIT ?4"
    ))?;
    // Rows are read one at a time and the page stops at its byte budget: a page of
    // large messages costs no more memory than a page of small ones.
    let mut budget = PageBudget::new();
    let mut entries = Vec::new();
    for row in stmt.query_map(
        params![user, after as i64, upper as i64, limit as i64],
        row_to_entry,
    )? {
        let entry = row??;
        if !budget.take_msg(&entry) {
            break;
        }
        entries.push(entry);
    }
    let last = entries.last().map_or(after, |e| e.seq);
    Ok(TimelinePage {
        more: last < upper,
        entries,
        head_seq: head,
    })
}

pub(super) fn read_summaries(
    conn: &Connection,
    user: &str,
    last_messages: u32,
    limit: u32,
) -> Result<SummaryPage, StoreError> {
    let head = head_seq(conn, user)?;
    let mut stmt = conn.prepare_cached(
        "SELECT conv_kind, conversation, latest_seq, unread FROM conversations
         WHERE user = ?1 ORDER BY latest_seq DESC LIMIT ?2",
    )?;
    let rows: Vec<(i32, String, i64, i64)> = stmt
        .query_map(params![user, limit as i64 + 1], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let more = rows.len() > limit as usize;
    let mut last_stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM {CONVERSATION_ENTRIES} ORDER BY t.seq DESC LIMIT ?4"
    ))?;
    let mut conversations = Vec::with_capacity(rows.len().min(limit as usize));
    // One budget for the whole answer: the conversations come first (each one's
    // position and count), then as many of their last messages as still fit, newest
    // conversation first; a conversation whose messages did not fit has fewer (or
    // none) in `last`, and the client gets them by timeline sync.
    let mut budget = PageBudget::new();
    let mut more = more;
    let mut kept = 0;
    for (_, conversation, _, _) in rows.iter().take(limit as usize) {
        if !budget.take(conversation.len() + 32) {
            more = true;
            break;
        }
        kept += 1;
    }
    for (kind, conversation, latest_seq, unread) in rows.into_iter().take(kept) {
        let mut last = Vec::new();
        if !budget.full() {
            for row in last_stmt.query_map(
                params![user, kind, conversation, last_messages as i64],
                row_to_entry,
            )? {
                let entry = row??;
                if !budget.take_msg(&entry) {
                    break;
                }
                last.push(entry);
            }
        }
        last.reverse();
        conversations.push(pb::ConversationSummary {
            kind,
            conversation,
            unread: unread as u64,
            latest_seq: latest_seq as u64,
            last,
            log: String::new(),
            ..Default::default()
        });
    }
    Ok(SummaryPage {
        conversations,
        more,
        head_seq: head,
    })
}
