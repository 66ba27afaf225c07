//! Read marks, recalls and history pages on PostgreSQL: the same rules as the SQLite
//! store (`crate::store::sqlite` documents them). A write that appends receipts locks
//! every head it will touch first, in id order (see [`super::timeline`]).

use deadpool_postgres::GenericClient;
use tern_protocol::page::PageBudget;
use tern_protocol::pb;

use super::timeline::{
    CONVERSATION_ENTRIES, ENTRY_COLUMNS, append_receipts, bump_heads, head_seq, insert_event,
    insert_receipt, lock_heads, restore_point, row_to_entry,
};
use super::{StoreError, Tx, execute, groups, query, query_one, query_opt};
use crate::store::{Fanout, log_key, rules};

/// Senders of incoming messages of a conversation with `after < seq <= up_to` in
/// `user`'s timeline, with the newest id of each.
async fn newly_read(
    tx: &Tx<'_>,
    user: &str,
    kind: i32,
    conversation: &str,
    after: u64,
    up_to: u64,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(query(
        tx,
        &format!(
            "SELECT m.sender, MAX(m.id) FROM {CONVERSATION_ENTRIES}
               AND t.seq > $4 AND t.seq <= $5 AND m.sender != $1
             GROUP BY m.sender ORDER BY m.sender"
        ),
        &[
            &user,
            &kind,
            &conversation,
            &(after as i64),
            &(up_to as i64),
        ],
    )
    .await?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

pub(super) async fn mark_read(
    tx: &Tx<'_>,
    user: &str,
    kind: pb::ConversationKind,
    conversation: &str,
    up_to_seq: u64,
    group_receipts_max: usize,
) -> Result<Vec<Fanout>, StoreError> {
    let kind_i = kind as i32;
    if kind == pb::ConversationKind::Group && groups::is_large(tx, conversation).await? {
        return mark_read_log(tx, user, conversation, up_to_seq).await;
    }
    let known = query_opt(
        tx,
        "SELECT 1 FROM conversations WHERE uid = $1 AND conv_kind = $2 AND conversation = $3",
        &[&user, &kind_i, &conversation],
    )
    .await?
    .is_some();
    if !known {
        return Ok(vec![]);
    }
    let up_to = up_to_seq.min(head_seq(tx, user).await?);
    let members = match kind {
        pb::ConversationKind::Group => groups::members(tx, conversation).await?.map(|m| m.len()),
        _ => None,
    };
    let tell_senders = rules::tells_senders(kind, members, group_receipts_max);
    // Every head this write appends to, locked first in one order; then the mark is
    // read under the lock (a mark from another server may have moved it).
    let prev = read_mark(tx, user, kind_i, conversation).await?;
    if up_to <= prev {
        return Ok(vec![]);
    }
    let read = newly_read(tx, user, kind_i, conversation, prev, up_to).await?;
    let mut lock: Vec<&str> = vec![user];
    if tell_senders {
        lock.extend(read.iter().map(|(s, _)| s.as_str()));
    }
    lock.sort_unstable();
    lock_heads(tx, &lock).await?;
    let prev_locked = read_mark(tx, user, kind_i, conversation).await?;
    if up_to <= prev_locked {
        return Ok(vec![]);
    }
    let read = if prev_locked == prev {
        read
    } else {
        newly_read(tx, user, kind_i, conversation, prev_locked, up_to).await?
    };
    set_read_mark(tx, user, kind_i, conversation, up_to).await?;
    let unread: i64 = query_one(
        tx,
        &format!("SELECT COUNT(*) FROM {CONVERSATION_ENTRIES} AND t.seq > $4 AND m.sender != $1"),
        &[&user, &kind_i, &conversation, &(up_to as i64)],
    )
    .await?
    .get(0);
    execute(
        tx,
        "UPDATE conversations SET unread = $4 WHERE uid = $1 AND conv_kind = $2 AND conversation = $3",
        &[&user, &kind_i, &conversation, &unread],
    )
    .await?;
    let up_to_msg = read.iter().map(|(_, id)| *id).max().unwrap_or(0) as u64;
    let mut receipts = vec![(
        user.to_owned(),
        rules::own_read_mark(kind, user, conversation, up_to_msg, up_to, unread as u64),
    )];
    if tell_senders {
        for (sender, id) in read {
            let receipt = rules::read_receipt_to_sender(kind, user, conversation, id as u64);
            receipts.push((sender, receipt));
        }
    }
    append_receipts(tx, receipts).await
}

/// Incoming messages of a large group's log above `mark`.
async fn log_unread(
    c: &impl GenericClient,
    user: &str,
    group: &str,
    mark: u64,
) -> Result<u64, StoreError> {
    Ok(query_one(
        c,
        "SELECT COUNT(*) FROM timeline t JOIN messages m ON m.id = t.message_id
         WHERE t.uid = $1 AND t.seq > $2 AND m.sender != $3",
        &[&log_key(group), &(mark as i64), &user],
    )
    .await?
    .get::<_, i64>(0) as u64)
}

/// The log position where `user` joined large group `group` (0 if unknown).
async fn joined_at(c: &impl GenericClient, group: &str, user: &str) -> Result<u64, StoreError> {
    Ok(query_opt(
        c,
        "SELECT seq FROM log_joins WHERE grp = $1 AND uid = $2",
        &[&group, &user],
    )
    .await?
    .map_or(0, |r| r.get::<_, i64>(0) as u64))
}

async fn read_mark(
    c: &impl GenericClient,
    user: &str,
    kind: i32,
    conversation: &str,
) -> Result<u64, StoreError> {
    Ok(query_opt(
        c,
        "SELECT up_to_seq FROM read_marks WHERE uid = $1 AND conv_kind = $2 AND conversation = $3",
        &[&user, &kind, &conversation],
    )
    .await?
    .map_or(0, |r| r.get::<_, i64>(0) as u64))
}

async fn set_read_mark(
    tx: &Tx<'_>,
    user: &str,
    kind: i32,
    conversation: &str,
    up_to: u64,
) -> Result<(), StoreError> {
    execute(
        tx,
        "INSERT INTO read_marks (uid, conv_kind, conversation, up_to_seq) VALUES ($1, $2, $3, $4)
         ON CONFLICT (uid, conv_kind, conversation) DO UPDATE SET up_to_seq = excluded.up_to_seq",
        &[&user, &kind, &conversation, &(up_to as i64)],
    )
    .await?;
    Ok(())
}

/// A read mark in a large group (positions in the group's log; no receipts to senders).
async fn mark_read_log(
    tx: &Tx<'_>,
    user: &str,
    group: &str,
    up_to_seq: u64,
) -> Result<Vec<Fanout>, StoreError> {
    let kind = pb::ConversationKind::Group as i32;
    if !groups::is_member(tx, group, user).await? {
        return Err(StoreError::NotAllowed("not a member of the group"));
    }
    // The user's head first (the lock under which the mark is compared and set).
    lock_heads(tx, &[user]).await?;
    let head = head_seq(tx, &log_key(group)).await?;
    let up_to = up_to_seq.min(head);
    if up_to <= read_mark(tx, user, kind, group).await? {
        return Ok(vec![]);
    }
    let seq = bump_heads(tx, &[user]).await?[user];
    set_read_mark(tx, user, kind, group, up_to).await?;
    let unread = log_unread(
        tx,
        user,
        group,
        up_to.max(joined_at(tx, group, user).await?),
    )
    .await?;
    Ok(vec![
        insert_receipt(
            tx,
            user,
            seq,
            pb::Receipt {
                status: pb::receipt::Status::Read as i32,
                kind,
                conversation: group.to_owned(),
                by_user: user.to_owned(),
                up_to_seq: up_to,
                unread,
                log: group.to_owned(),
                at_seq: head,
                ..Default::default()
            },
        )
        .await?,
    ])
}

/// The large groups `user` is in, as summaries in their logs' positions.
pub(super) async fn logs(
    c: &impl GenericClient,
    user: &str,
    last_messages: u32,
) -> Result<(Vec<pb::ConversationSummary>, bool), StoreError> {
    let kind = pb::ConversationKind::Group as i32;
    let groups: Vec<String> = query(
        c,
        "SELECT gm.grp FROM group_members gm JOIN groups g ON g.id = gm.grp
         WHERE gm.uid = $1 AND g.large ORDER BY gm.grp",
        &[&user],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let mut out = Vec::with_capacity(groups.len());
    let mut budget = PageBudget::new();
    let kept = groups
        .iter()
        .take_while(|g| budget.take(g.len() * 2 + 48))
        .count();
    let more = kept < groups.len();
    for group in groups.into_iter().take(kept) {
        let key = log_key(&group);
        let head = head_seq(c, &key).await?;
        let mark = read_mark(c, user, kind, &group).await?;
        let joined_at = joined_at(c, &group, user).await?;
        let restored_seq = restore_point(c, &key).await?;
        let (mut last, _) = history_of(c, &key, kind, &group, 0, last_messages).await?;
        last.retain(|e| e.seq > joined_at);
        last.retain(|e| budget.take_msg(e));
        last.reverse();
        out.push(pb::ConversationSummary {
            kind,
            conversation: group.clone(),
            unread: log_unread(c, user, &group, mark.max(joined_at)).await?,
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

pub(super) async fn recall(
    tx: &Tx<'_>,
    user: &str,
    server_msg_id: u64,
    window_ms: u64,
) -> Result<Vec<Fanout>, StoreError> {
    let Some(r) = query_opt(
        tx,
        "SELECT sender, recipient, kind, server_ts, recalled FROM messages WHERE id = $1 FOR UPDATE",
        &[&(server_msg_id as i64)],
    )
    .await?
    else {
        return Err(StoreError::MessageNotFound);
    };
    let (sender, recipient, kind, ts, recalled): (String, String, i32, i64, bool) =
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
    if sender != user {
        return Err(StoreError::MessageNotFound);
    }
    if recalled {
        return Ok(vec![]);
    }
    if tern_protocol::unix_ms().saturating_sub(ts as u64) > window_ms {
        return Err(StoreError::RecallExpired);
    }
    execute(
        tx,
        "UPDATE messages SET body = ''::bytea, content_type = 0, recalled = true WHERE id = $1",
        &[&(server_msg_id as i64)],
    )
    .await?;
    let recall_body =
        |conversation: &str| rules::recall_entry(server_msg_id, kind, conversation, user);
    if kind == pb::ConversationKind::Group as i32 && groups::is_large(tx, &recipient).await? {
        return Ok(vec![
            groups::append_to_log(tx, &recipient, recall_body(&recipient)).await?,
        ]);
    }
    let members = if kind == pb::ConversationKind::Group as i32 {
        groups::members(tx, &recipient).await?.unwrap_or_default()
    } else {
        vec![]
    };
    let holders = rules::recall_holders(kind, &sender, &recipient, members);
    let owners: Vec<&str> = holders.iter().map(|(h, _)| h.as_str()).collect();
    let seqs = bump_heads(tx, &owners).await?;
    let mut fanout = Vec::with_capacity(holders.len());
    for (holder, conversation) in &holders {
        fanout.push(
            insert_event(
                tx,
                holder,
                seqs[holder],
                kind,
                conversation,
                recall_body(conversation),
            )
            .await?,
        );
    }
    Ok(fanout)
}

pub(super) async fn history(
    c: &impl GenericClient,
    user: &str,
    kind: pb::ConversationKind,
    conversation: &str,
    before_seq: u64,
    limit: u32,
) -> Result<(Vec<pb::TimelineEntry>, bool), StoreError> {
    if kind == pb::ConversationKind::Group && groups::is_large(c, conversation).await? {
        if !groups::is_member(c, conversation, user).await? {
            return Err(StoreError::NotAllowed("not a member of the group"));
        }
        return history_of(
            c,
            &log_key(conversation),
            kind as i32,
            conversation,
            before_seq,
            limit,
        )
        .await;
    }
    history_of(c, user, kind as i32, conversation, before_seq, limit).await
}

/// Message entries of `conversation` in the timeline `owner` below `before_seq`.
async fn history_of(
    c: &impl GenericClient,
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
    let rows = query(
        c,
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM {CONVERSATION_ENTRIES} AND t.seq < $4
             ORDER BY t.seq DESC LIMIT $5"
        ),
        &[&owner, &kind, &conversation, &before, &(limit as i64 + 1)],
    )
    .await?;
    let mut budget = PageBudget::new();
    let mut entries = Vec::new();
    let mut more = false;
    for row in &rows {
        let entry = row_to_entry(row)?;
        if entries.len() == limit as usize || !budget.take_msg(&entry) {
            more = true;
            break;
        }
        entries.push(entry);
    }
    Ok((entries, more))
}
