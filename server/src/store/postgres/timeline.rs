//! Timelines on PostgreSQL: per-user contiguous seqs taken under row locks in one
//! fixed order, a message stored once with an entry in every timeline it concerns,
//! delivery cursors and receipts, and the reads of pages and summaries.
//!
//! **Locks.** A user's `users.head_seq` row is the lock on their timeline. Every write
//! that appends to several timelines bumps all their heads in *one* statement, in
//! ascending user id ([`bump_heads`]), before it allocates a message id; so two writers
//! (two lanes, two servers) that share timelines take the rows in the same order and
//! cannot deadlock each other inside one job, and message ids grow in each timeline's
//! seq order.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;
use prost::Message as _;
use tern_protocol::page::PageBudget;
use tern_protocol::pb;
use tokio_postgres::Row;

use super::{StoreError, Tx, execute, groups, query, query_one, query_opt};
use crate::store::{Fanout, NewMessage, StoredMessage, SummaryPage, TimelinePage, log_key, rules};

/// Takes the next seq of each timeline in `users` (ascending id order, one statement)
/// and returns them by user. Creates the heads of users seen for the first time.
pub(super) async fn bump_heads(
    tx: &Tx<'_>,
    users: &[&str],
) -> Result<HashMap<String, u64>, StoreError> {
    let mut sorted: Vec<&str> = users.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let rows = query(
        tx,
        "INSERT INTO users (uid, head_seq) SELECT u, 1 FROM unnest($1::text[]) AS u ORDER BY u
         ON CONFLICT (uid) DO UPDATE SET head_seq = users.head_seq + 1
         RETURNING uid, head_seq",
        &[&sorted],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect())
}

/// The next seq of one timeline.
pub(super) async fn next_seq(tx: &Tx<'_>, user: &str) -> Result<u64, StoreError> {
    bump_heads(tx, &[user])
        .await?
        .remove(user)
        .ok_or(StoreError::Database("head not returned".into()))
}

/// Locks the heads of `users` in ascending id order (the ones that exist).
pub(super) async fn lock_heads(tx: &Tx<'_>, users: &[&str]) -> Result<(), StoreError> {
    query(
        tx,
        "SELECT uid FROM users WHERE uid = ANY($1) ORDER BY uid FOR UPDATE",
        &[&users],
    )
    .await?;
    Ok(())
}

pub(super) async fn head_seq(c: &impl GenericClient, user: &str) -> Result<u64, StoreError> {
    Ok(
        query_opt(c, "SELECT head_seq FROM users WHERE uid = $1", &[&user])
            .await?
            .map_or(0, |r| r.get::<_, i64>(0) as u64),
    )
}

/// The head of `owner`'s timeline at the last restore (0: never restored).
pub(super) async fn restore_point(c: &impl GenericClient, owner: &str) -> Result<u64, StoreError> {
    Ok(query_opt(
        c,
        "SELECT seq FROM restore_points WHERE owner = $1",
        &[&owner],
    )
    .await?
    .map_or(0, |r| r.get::<_, i64>(0) as u64))
}

/// Writes an event entry (recall, group event) at a seq already taken.
pub(super) async fn insert_event(
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
    execute(
        tx,
        "INSERT INTO timeline (uid, seq, conv_kind, conversation, event) VALUES ($1, $2, $3, $4, $5)",
        &[&user, &(seq as i64), &kind, &conversation, &entry.encode_to_vec()],
    )
    .await?;
    entry.seq = seq;
    Ok(Fanout {
        user: user.to_owned(),
        entry,
        log: None,
    })
}

/// Writes a receipt at a seq already taken and returns it.
pub(super) async fn insert_receipt(
    tx: &Tx<'_>,
    user: &str,
    seq: u64,
    receipt: pb::Receipt,
) -> Result<Fanout, StoreError> {
    execute(
        tx,
        "INSERT INTO timeline (uid, seq, conv_kind, conversation, receipt) VALUES ($1, $2, $3, $4, $5)",
        &[&user, &(seq as i64), &receipt.kind, &receipt.conversation, &receipt.encode_to_vec()],
    )
    .await?;
    Ok(Fanout {
        user: user.to_owned(),
        log: None,
        entry: pb::TimelineEntry {
            seq,
            body: Some(pb::timeline_entry::Body::Receipt(receipt)),
        },
    })
}

/// Receipts to several users (each a sender told about `by`): heads bumped in one
/// ordered statement, then one entry each.
pub(super) async fn append_receipts(
    tx: &Tx<'_>,
    receipts: Vec<(String, pb::Receipt)>,
) -> Result<Vec<Fanout>, StoreError> {
    if receipts.is_empty() {
        return Ok(vec![]);
    }
    let users: Vec<&str> = receipts.iter().map(|(u, _)| u.as_str()).collect();
    let seqs = bump_heads(tx, &users).await?;
    let mut out = Vec::with_capacity(receipts.len());
    for (user, receipt) in receipts {
        let seq = seqs[&user];
        out.push(insert_receipt(tx, &user, seq, receipt).await?);
    }
    Ok(out)
}

/// Message entries for several timelines, with their conversation rows, in two
/// statements. Each row: (user, seq, conversation, unread increment).
async fn insert_message_entries(
    tx: &Tx<'_>,
    kind: i32,
    id: u64,
    rows: &[(&str, u64, &str, i64)],
) -> Result<(), StoreError> {
    let users: Vec<&str> = rows.iter().map(|r| r.0).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.1 as i64).collect();
    let convs: Vec<&str> = rows.iter().map(|r| r.2).collect();
    let unread: Vec<i64> = rows.iter().map(|r| r.3).collect();
    execute(
        tx,
        "INSERT INTO timeline (uid, seq, conv_kind, conversation, message_id)
         SELECT u, s, $3, c, $5 FROM unnest($1::text[], $2::bigint[], $4::text[]) AS x(u, s, c)",
        &[&users, &seqs, &kind, &convs, &(id as i64)],
    )
    .await?;
    execute(
        tx,
        "INSERT INTO conversations (uid, conv_kind, conversation, latest_seq, unread)
         SELECT u, $3, c, s, n FROM unnest($1::text[], $2::bigint[], $4::text[], $5::bigint[]) AS x(u, s, c, n)
         ON CONFLICT (uid, conv_kind, conversation)
         DO UPDATE SET latest_seq = excluded.latest_seq, unread = conversations.unread + excluded.unread",
        &[&users, &seqs, &kind, &convs, &unread],
    )
    .await?;
    Ok(())
}

/// A direct message in one round trip (`tern_store_direct`, migration 0002), with
/// the same rules as the group path below: idempotent, the device's order first, a
/// refusal for good keeps the send seq taken, heads locked in id order. On a bare
/// connection it is its own transaction.
pub(super) async fn store_direct(
    c: &impl GenericClient,
    m: &NewMessage,
    last_ts: &mut u64,
) -> Result<StoredMessage, StoreError> {
    let ts = tern_protocol::unix_ms().max(*last_ts);
    let r = query_one(
        c,
        "SELECT o_status, o_id, o_sender_seq, o_recipient_seq, o_server_ts, o_expected, o_kind, o_recipient
         FROM tern_store_direct($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            &m.sender,
            &&m.client_msg_id.0[..],
            &m.recipient,
            &(m.kind as i32),
            &(m.content_type as i64),
            &&m.body[..],
            &(m.client_ts_ms as i64),
            &(ts as i64),
            &m.device,
            &(m.send_seq as i64),
            &m.require_known_recipient,
        ],
    )
    .await?;
    let stored = direct_result(c, m, &r, 0, ts).await?;
    *last_ts = ts;
    Ok(stored)
}

/// What `tern_store_direct` (or `tern_write_batch` for one message) answered for `m`:
/// its columns start at `at` in `r`; `ts` is the server time it was given.
pub(super) async fn direct_result(
    c: &impl GenericClient,
    m: &NewMessage,
    r: &Row,
    at: usize,
    ts: u64,
) -> Result<StoredMessage, StoreError> {
    let int = |i| r.get::<_, Option<i64>>(at + i).unwrap_or(0) as u64;
    match r.get::<_, &str>(at) {
        "duplicate" => {
            // Stored before, perhaps as a large group's message (its seq is in the log).
            let kind: i32 = r.get::<_, Option<i32>>(at + 6).unwrap_or_default();
            let recipient: String = r.get::<_, Option<String>>(at + 7).unwrap_or_default();
            let in_log = kind == pb::ConversationKind::Group as i32
                && groups::is_large(c, &recipient).await?;
            Ok(StoredMessage {
                server_msg_id: int(1),
                sender_seq: if in_log { 0 } else { int(2) },
                log_seq: if in_log { int(2) } else { 0 },
                server_ts_ms: int(4),
                duplicate: true,
                fanout: vec![],
            })
        }
        "out_of_order" => Err(StoreError::OutOfOrder { expected: int(5) }),
        "unknown_recipient" => Err(StoreError::UnknownRecipient),
        "stored" => {
            let (id, sender_seq) = (int(1), int(2));
            let stored = m.stored(id, ts);
            let entry = |seq| pb::TimelineEntry {
                seq,
                body: Some(pb::timeline_entry::Body::Message(stored.clone())),
            };
            let mut fanout = vec![Fanout {
                user: m.sender.clone(),
                entry: entry(sender_seq),
                log: None,
            }];
            if m.recipient != m.sender {
                fanout.push(Fanout {
                    user: m.recipient.clone(),
                    entry: entry(int(3)),
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
        other => Err(StoreError::Database(format!(
            "tern_store_direct answered {other:?}"
        ))),
    }
}

/// Stores a message inside a transaction: a direct one with [`store_direct`] (and its
/// c2s webhook in the same transaction), a group one statement by statement.
pub(super) async fn store_message(
    tx: &Tx<'_>,
    m: &NewMessage,
    last_ts: &mut u64,
) -> Result<StoredMessage, StoreError> {
    if m.kind != pb::ConversationKind::Group {
        let stored = store_direct(tx, m, last_ts).await?;
        if m.to_service && !stored.duplicate {
            let payload = crate::store::ops::c2s_payload(
                &m.stored(stored.server_msg_id, stored.server_ts_ms),
            );
            super::outbox::enqueue(tx, "c2s", &payload).await?;
        }
        return Ok(stored);
    }
    let existing = query_opt(
        tx,
        "SELECT id, sender_seq, server_ts, kind, recipient FROM messages WHERE sender = $1 AND client_msg_id = $2",
        &[&m.sender, &&m.client_msg_id.0[..]],
    )
    .await?;
    if let Some(r) = existing {
        let (id, seq, ts, kind, recipient): (i64, i64, i64, i32, String) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
        let in_log =
            kind == pb::ConversationKind::Group as i32 && groups::is_large(tx, &recipient).await?;
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
        // As in SQLite: the order is checked before anything else is judged.
        super::order::take_send_seq(tx, &m.sender, &m.device, m.send_seq).await?;
    }
    // The group row is read FOR SHARE: a membership change (which takes it FOR UPDATE)
    // is ordered before or after this send, never beside it.
    let Some(large) = groups::lock_shared(tx, &m.recipient).await? else {
        return Err(StoreError::GroupNotFound);
    };
    if !m.from_backend && !groups::is_member(tx, &m.recipient, &m.sender).await? {
        return Err(StoreError::NotAllowed("not a member of the group"));
    }
    let members = if large {
        vec![]
    } else {
        groups::members(tx, &m.recipient).await?.unwrap_or_default()
    };
    let kind = m.kind as i32;
    // Heads first (ordered locks), then the id: ids grow in every timeline's order.
    let seqs = if large {
        bump_heads(tx, &[&log_key(&m.recipient)]).await?
    } else {
        let mut owners: Vec<&str> = vec![&m.sender];
        owners.extend(
            members
                .iter()
                .map(String::as_str)
                .filter(|u| *u != m.sender),
        );
        bump_heads(tx, &owners).await?
    };
    let sender_seq = if large {
        seqs[&log_key(&m.recipient)]
    } else {
        seqs[&m.sender]
    };
    let ts = tern_protocol::unix_ms().max(*last_ts);
    *last_ts = ts;
    let id = query_one(
        tx,
        "INSERT INTO messages (sender, client_msg_id, recipient, kind, content_type, body, client_ts, server_ts, sender_seq)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
        &[
            &m.sender,
            &&m.client_msg_id.0[..],
            &m.recipient,
            &kind,
            &(m.content_type as i64),
            &&m.body[..],
            &(m.client_ts_ms as i64),
            &(ts as i64),
            &(sender_seq as i64),
        ],
    )
    .await?
    .get::<_, i64>(0) as u64;
    let stored = m.stored(id, ts);
    if m.to_service {
        super::outbox::enqueue(tx, "c2s", &crate::store::ops::c2s_payload(&stored)).await?;
    }
    let entry = |seq| pb::TimelineEntry {
        seq,
        body: Some(pb::timeline_entry::Body::Message(stored.clone())),
    };
    if large {
        execute(
            tx,
            "INSERT INTO timeline (uid, seq, conv_kind, conversation, message_id) VALUES ($1, $2, $3, $4, $5)",
            &[&log_key(&m.recipient), &(sender_seq as i64), &kind, &m.recipient, &(id as i64)],
        )
        .await?;
        return Ok(StoredMessage {
            server_msg_id: id,
            sender_seq: 0,
            log_seq: sender_seq,
            server_ts_ms: ts,
            duplicate: false,
            fanout: vec![groups::log_fanout(&m.recipient, entry(sender_seq))],
        });
    }
    // Sender first, then the others in the order their heads were taken.
    let mut rows: Vec<(&str, u64, &str, i64)> = vec![(&m.sender, sender_seq, &m.recipient, 0)];
    for u in members.iter().filter(|u| **u != m.sender) {
        rows.push((u, seqs[u.as_str()], &m.recipient, 1));
    }
    insert_message_entries(tx, kind, id, &rows).await?;
    let fanout = rows
        .iter()
        .map(|(u, seq, _, _)| Fanout {
            user: (*u).to_owned(),
            entry: entry(*seq),
            log: None,
        })
        .collect();
    Ok(StoredMessage {
        server_msg_id: id,
        sender_seq,
        log_seq: 0,
        server_ts_ms: ts,
        duplicate: false,
        fanout,
    })
}

/// A device of `user` stored everything up to `seq` (`tern_ack`, migration 0002, moves
/// the cursors and takes the receipts' seqs in one round trip); the DELIVERED receipts
/// it asks for are written here in one more.
pub(super) async fn ack_delivered(
    tx: &Tx<'_>,
    user: &str,
    device: &str,
    seq: u64,
) -> Result<Vec<Fanout>, StoreError> {
    let direct = pb::ConversationKind::Direct as i32;
    let rows = query(
        tx,
        "SELECT o_sender, o_seq, o_up_to FROM tern_ack($1, $2, $3, $4)",
        &[&user, &device, &(seq.min(i64::MAX as u64) as i64), &direct],
    )
    .await?;
    let receipts = rows
        .iter()
        .map(|r| Delivered {
            by: user.to_owned(),
            sender: r.get(0),
            seq: r.get::<_, i64>(1) as u64,
            up_to: r.get::<_, i64>(2) as u64,
        })
        .collect();
    write_delivered(tx, receipts).await
}

/// A DELIVERED receipt `tern_ack` took a seq for: `by` has the messages of `sender` up
/// to `up_to`; it goes to `sender`'s timeline at `seq`.
pub(super) struct Delivered {
    pub(super) by: String,
    pub(super) sender: String,
    pub(super) seq: u64,
    pub(super) up_to: u64,
}

/// Writes DELIVERED receipts (one statement) and returns them for pushing.
pub(super) async fn write_delivered(
    tx: &Tx<'_>,
    receipts: Vec<Delivered>,
) -> Result<Vec<Fanout>, StoreError> {
    if receipts.is_empty() {
        return Ok(vec![]);
    }
    let direct = pb::ConversationKind::Direct as i32;
    let n = receipts.len();
    let (mut users, mut seqs, mut convs, mut encoded) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut fanout = Vec::with_capacity(n);
    for d in receipts {
        let receipt = rules::delivered_receipt(&d.by, d.up_to);
        encoded.push(receipt.encode_to_vec());
        fanout.push(Fanout {
            user: d.sender.clone(),
            log: None,
            entry: pb::TimelineEntry {
                seq: d.seq,
                body: Some(pb::timeline_entry::Body::Receipt(receipt)),
            },
        });
        users.push(d.sender);
        seqs.push(d.seq as i64);
        convs.push(d.by);
    }
    execute(
        tx,
        "INSERT INTO timeline (uid, seq, conv_kind, conversation, receipt)
         SELECT u, s, $3, c, r FROM unnest($1::text[], $2::bigint[], $4::text[], $5::bytea[]) AS x(u, s, c, r)",
        &[&users, &seqs, &direct, &convs, &encoded],
    )
    .await?;
    Ok(fanout)
}

/// One conversation's entries, as every read of a conversation selects them (a page of
/// it, the summaries' last messages, unread counts, read receipts): message entries
/// only, through `timeline_by_conversation` (PostgreSQL's planner picks it from its
/// statistics). Here the index still holds every entry: the SQLite store's holds
/// message entries alone (its migration 0006), but rebuilding this one in a migration
/// would lock the timeline of a running cluster during a rolling upgrade. Binds $1 the
/// timeline's owner, $2 the conversation kind, $3 the conversation; a query adds its
/// own terms with `AND`.
pub(super) const CONVERSATION_ENTRIES: &str = "timeline t JOIN messages m ON m.id = t.message_id
     WHERE t.uid = $1 AND t.conv_kind = $2 AND t.conversation = $3 AND t.message_id IS NOT NULL";

pub(super) const ENTRY_COLUMNS: &str =
    "t.seq, t.receipt, m.id, m.client_msg_id, m.sender, m.recipient, m.kind, m.content_type,
     m.body, m.client_ts, m.server_ts, t.event, m.recalled";

pub(super) fn row_to_entry(r: &Row) -> Result<pb::TimelineEntry, StoreError> {
    let seq = r.get::<_, i64>(0) as u64;
    if let Some(event) = r.get::<_, Option<Vec<u8>>>(11) {
        let e = pb::TimelineEntry::decode(&event[..])
            .map_err(|e| StoreError::Corrupt(format!("event at seq {seq}: {e}")))?;
        return Ok(pb::TimelineEntry { seq, body: e.body });
    }
    let body = match r.get::<_, Option<Vec<u8>>>(1) {
        Some(bytes) => pb::timeline_entry::Body::Receipt(
            pb::Receipt::decode(&bytes[..])
                .map_err(|e| StoreError::Corrupt(format!("receipt at seq {seq}: {e}")))?,
        ),
        None => pb::timeline_entry::Body::Message(pb::StoredMessage {
            server_msg_id: r.get::<_, i64>(2) as u64,
            client_msg_id: r.get::<_, Vec<u8>>(3).into(),
            sender: r.get(4),
            recipient: r.get(5),
            kind: r.get(6),
            content_type: r.get::<_, i64>(7) as u32,
            body: r.get::<_, Vec<u8>>(8).into(),
            client_ts_ms: r.get::<_, i64>(9) as u64,
            server_ts_ms: r.get::<_, i64>(10) as u64,
            recalled: r.get(12),
        }),
    };
    Ok(pb::TimelineEntry {
        seq,
        body: Some(body),
    })
}

pub(super) async fn read_timeline(
    c: &impl GenericClient,
    user: &str,
    after: u64,
    until: u64,
    limit: u32,
) -> Result<TimelinePage, StoreError> {
    let head = head_seq(c, user).await?;
    let upper = if until == 0 { head } else { until.min(head) };
    // Rows come in slices: a page of large messages stops at its byte budget after
    // reading little more than it returns.
    let mut budget = PageBudget::new();
    let mut entries = Vec::new();
    let mut from = after;
    let slice = limit.min(64);
    'pages: while entries.len() < limit as usize && from < upper {
        let want = slice.min(limit - entries.len() as u32);
        let rows = query(
            c,
            &format!(
                "SELECT {ENTRY_COLUMNS} FROM timeline t LEFT JOIN messages m ON m.id = t.message_id
                 WHERE t.uid = $1 AND t.seq > $2 AND t.seq <= $3 ORDER BY t.seq LIMIT $4"
            ),
            &[&user, &(from as i64), &(upper as i64), &(want as i64)],
        )
        .await?;
        let n = rows.len();
        for row in &rows {
            let entry = row_to_entry(row)?;
            if !budget.take_msg(&entry) {
                break 'pages;
            }
            from = entry.seq;
            entries.push(entry);
        }
        if n < want as usize {
            break;
        }
    }
    let last = entries.last().map_or(after, |e| e.seq);
    Ok(TimelinePage {
        more: last < upper,
        entries,
        head_seq: head,
    })
}

pub(super) async fn read_summaries(
    c: &impl GenericClient,
    user: &str,
    last_messages: u32,
    limit: u32,
) -> Result<SummaryPage, StoreError> {
    let head = head_seq(c, user).await?;
    let rows = query(
        c,
        "SELECT conv_kind, conversation, latest_seq, unread FROM conversations
         WHERE uid = $1 ORDER BY latest_seq DESC LIMIT $2",
        &[&user, &(limit as i64 + 1)],
    )
    .await?;
    let mut more = rows.len() > limit as usize;
    // One budget for the whole answer, as in the SQLite store: every conversation's
    // position first, then as many of their last messages as fit.
    let mut budget = PageBudget::new();
    let mut kept = 0;
    for r in rows.iter().take(limit as usize) {
        if !budget.take(r.get::<_, &str>(1).len() + 32) {
            more = true;
            break;
        }
        kept += 1;
    }
    let mut conversations = Vec::with_capacity(kept);
    for r in rows.iter().take(kept) {
        let (kind, conversation): (i32, String) = (r.get(0), r.get(1));
        let mut last = Vec::new();
        if !budget.full() {
            let entries = query(
                c,
                &format!(
                    "SELECT {ENTRY_COLUMNS} FROM {CONVERSATION_ENTRIES} ORDER BY t.seq DESC LIMIT $4"
                ),
                &[&user, &kind, &conversation, &(last_messages as i64)],
            )
            .await?;
            for row in &entries {
                let entry = row_to_entry(row)?;
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
            unread: r.get::<_, i64>(3) as u64,
            latest_seq: r.get::<_, i64>(2) as u64,
            last,
            ..Default::default()
        });
    }
    Ok(SummaryPage {
        conversations,
        more,
        head_seq: head,
    })
}
