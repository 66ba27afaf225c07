//! Groups on PostgreSQL: the same rules and events as the SQLite store
//! (`crate::store::sqlite` documents them). A membership change takes the group's row
//! `FOR UPDATE`; a send into the group takes it `FOR SHARE` ([`lock_shared`]), so "is
//! the sender a member" is answered against the membership as of that send's place in
//! the commit order, across servers too.

use std::collections::HashSet;
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use tern_protocol::pb;

use super::timeline::{bump_heads, insert_event, next_seq};
use super::{StoreError, Tx, execute, query, query_one, query_opt};
use crate::store::{Fanout, GroupLimits, GroupOp, GroupOutcome, LogRoute, log_key, rules};

/// Whether `group` exists and is large, locking its row against membership changes.
pub(super) async fn lock_shared(tx: &Tx<'_>, group: &str) -> Result<Option<bool>, StoreError> {
    Ok(query_opt(
        tx,
        "SELECT large FROM groups WHERE id = $1 FOR SHARE",
        &[&group],
    )
    .await?
    .map(|r| r.get(0)))
}

/// Whether `group` exists and is a large group (read diffusion).
pub(super) async fn is_large(c: &impl GenericClient, group: &str) -> Result<bool, StoreError> {
    Ok(
        query_opt(c, "SELECT large FROM groups WHERE id = $1", &[&group])
            .await?
            .is_some_and(|r| r.get(0)),
    )
}

/// An entry of `group`'s log, to be routed to its members.
pub(super) fn log_fanout(group: &str, entry: pb::TimelineEntry) -> Fanout {
    Fanout {
        user: group.to_owned(),
        entry,
        log: Some(Arc::new(LogRoute {
            group: group.to_owned(),
        })),
    }
}

/// Appends a non-message entry (recall, group event) to `group`'s log.
pub(super) async fn append_to_log(
    tx: &Tx<'_>,
    group: &str,
    body: pb::timeline_entry::Body,
) -> Result<Fanout, StoreError> {
    let key = log_key(group);
    let seq = next_seq(tx, &key).await?;
    let f = insert_event(
        tx,
        &key,
        seq,
        pb::ConversationKind::Group as i32,
        group,
        body,
    )
    .await?;
    Ok(log_fanout(group, f.entry))
}

/// Whether `user` is a member of `group`.
pub(super) async fn is_member(
    c: &impl GenericClient,
    group: &str,
    user: &str,
) -> Result<bool, StoreError> {
    Ok(query_opt(
        c,
        "SELECT 1 FROM group_members WHERE grp = $1 AND uid = $2",
        &[&group, &user],
    )
    .await?
    .is_some())
}

/// Members of `group` in join order, or `None` if it does not exist.
pub(super) async fn members(
    c: &impl GenericClient,
    group: &str,
) -> Result<Option<Vec<String>>, StoreError> {
    if query_opt(c, "SELECT 1 FROM groups WHERE id = $1", &[&group])
        .await?
        .is_none()
    {
        return Ok(None);
    }
    Ok(Some(
        query(
            c,
            "SELECT uid FROM group_members WHERE grp = $1 ORDER BY joined, uid",
            &[&group],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect(),
    ))
}

/// The group's description, if it exists.
pub(super) async fn info(
    c: &impl GenericClient,
    group: &str,
) -> Result<Option<pb::GroupInfo>, StoreError> {
    let Some(r) = query_opt(
        c,
        "SELECT name, owner, created_ms, large FROM groups WHERE id = $1",
        &[&group],
    )
    .await?
    else {
        return Ok(None);
    };
    let members = members(c, group).await?.unwrap_or_default();
    Ok(Some(pb::GroupInfo {
        group: group.to_owned(),
        name: r.get(0),
        owner: r.get(1),
        member_count: members.len() as u32,
        members,
        created_ms: r.get::<_, i64>(2) as u64,
        large: r.get(3),
    }))
}

/// Every group `user` belongs to.
pub(super) async fn of_user(
    c: &impl GenericClient,
    user: &str,
) -> Result<Vec<pb::GroupInfo>, StoreError> {
    let ids: Vec<String> = query(
        c,
        "SELECT grp FROM group_members WHERE uid = $1 ORDER BY grp",
        &[&user],
    )
    .await?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(g) = info(c, &id).await? {
            out.push(g);
        }
    }
    Ok(out)
}

/// Inserts members with consecutive join numbers from `first`.
async fn insert_members(
    tx: &Tx<'_>,
    group: &str,
    first: i64,
    users: &[String],
) -> Result<(), StoreError> {
    let joined: Vec<i64> = (first..).take(users.len()).collect();
    execute(
        tx,
        "INSERT INTO group_members (grp, uid, joined) SELECT $1, u, j FROM unnest($2::text[], $3::bigint[]) AS x(u, j)",
        &[&group, &users, &joined],
    )
    .await?;
    Ok(())
}

/// Locks an existing group's row for a membership change; `None` if it does not exist.
async fn lock_for_change(tx: &Tx<'_>, group: &str) -> Result<Option<bool>, StoreError> {
    Ok(query_opt(
        tx,
        "SELECT large FROM groups WHERE id = $1 FOR UPDATE",
        &[&group],
    )
    .await?
    .map(|r| r.get(0)))
}

/// Applies one membership change.
pub(super) async fn apply(
    tx: &Tx<'_>,
    op: &GroupOp,
    limits: GroupLimits,
) -> Result<GroupOutcome, StoreError> {
    use pb::group_event::Type;
    let (group, by, kind, changed, mut notify) = match op {
        GroupOp::Create {
            id,
            name,
            owner,
            members,
            large,
        } => {
            let all = rules::initial_members(owner, members, rules::max_members(limits, *large))?;
            let inserted = execute(
                tx,
                "INSERT INTO groups (id, name, owner, created_ms, large) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO NOTHING",
                &[id, name, owner, &(tern_protocol::unix_ms() as i64), large],
            )
            .await?;
            if inserted == 0 {
                return Err(StoreError::Invalid("group id already exists"));
            }
            insert_members(tx, id, 1, &all).await?;
            (id, owner.clone(), Type::Created, all.clone(), vec![])
        }
        GroupOp::Add { group, by, members } => {
            rules::valid_members(members)?;
            let Some(large) = lock_for_change(tx, group).await? else {
                return Err(StoreError::GroupNotFound);
            };
            if let Some(by) = by {
                if !is_member(tx, group, by).await? {
                    return Err(StoreError::NotAllowed("only members may add members"));
                }
            }
            let max_members = rules::max_members(limits, large);
            if members.len() > max_members {
                return Err(StoreError::GroupFull);
            }
            let named = rules::distinct(members);
            let present: HashSet<String> = query(
                tx,
                "SELECT uid FROM group_members WHERE grp = $1 AND uid = ANY($2)",
                &[group, &named],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
            let added: Vec<String> = named
                .into_iter()
                .filter(|m| !present.contains(*m))
                .cloned()
                .collect();
            let r = query_one(
                tx,
                "SELECT COUNT(*), COALESCE(MAX(joined), 0) FROM group_members WHERE grp = $1",
                &[group],
            )
            .await?;
            let (count, last_join): (i64, i64) = (r.get(0), r.get(1));
            if count as usize + added.len() > max_members {
                return Err(StoreError::GroupFull);
            }
            insert_members(tx, group, last_join + 1, &added).await?;
            (
                group,
                by.clone().unwrap_or_default(),
                Type::MembersAdded,
                added,
                vec![],
            )
        }
        GroupOp::Remove { group, by, members } => {
            lock_for_change(tx, group)
                .await?
                .ok_or(StoreError::GroupNotFound)?;
            let g = info(tx, group).await?.ok_or(StoreError::GroupNotFound)?;
            let removed = rules::removed_members(&g, by.as_ref(), members)?;
            execute(
                tx,
                "DELETE FROM group_members WHERE grp = $1 AND uid = ANY($2)",
                &[group, &removed],
            )
            .await?;
            (
                group,
                by.clone().unwrap_or_default(),
                Type::MembersRemoved,
                removed.clone(),
                removed,
            )
        }
        GroupOp::Leave { group, user } => {
            lock_for_change(tx, group)
                .await?
                .ok_or(StoreError::GroupNotFound)?;
            let g = info(tx, group).await?.ok_or(StoreError::GroupNotFound)?;
            let heir = rules::leaving(&g, user)?;
            execute(
                tx,
                "DELETE FROM group_members WHERE grp = $1 AND uid = $2",
                &[group, user],
            )
            .await?;
            if let Some(heir) = heir {
                execute(
                    tx,
                    "UPDATE groups SET owner = $2 WHERE id = $1",
                    &[group, &heir],
                )
                .await?;
            }
            (
                group,
                user.clone(),
                Type::MemberLeft,
                vec![user.clone()],
                vec![user.clone()],
            )
        }
    };
    let info = info(tx, group).await?.ok_or(StoreError::GroupNotFound)?;
    if changed.is_empty() {
        return Ok(GroupOutcome {
            info,
            fanout: vec![],
        });
    }
    let event = rules::group_event(kind, by, &changed, &info);
    let gkind = pb::ConversationKind::Group as i32;
    if info.large {
        // One entry in the log; an event in the own timeline of each member concerned,
        // carrying the log position (a new member starts there).
        let key = log_key(group);
        let mut owners: Vec<&str> = vec![&key];
        owners.extend(changed.iter().map(String::as_str));
        let seqs = bump_heads(tx, &owners).await?;
        let log_seq = seqs[&key];
        let event = pb::GroupEvent { log_seq, ..event };
        let body = || pb::timeline_entry::Body::Group(event.clone());
        let logged = insert_event(tx, &key, log_seq, gkind, group, body()).await?;
        if matches!(kind, Type::Created | Type::MembersAdded) {
            execute(
                tx,
                "INSERT INTO log_joins (grp, uid, seq) SELECT $1, u, $3 FROM unnest($2::text[]) AS u
                 ON CONFLICT (grp, uid) DO UPDATE SET seq = excluded.seq",
                &[group, &changed, &(log_seq as i64)],
            )
            .await?;
        }
        let mut fanout = vec![log_fanout(group, logged.entry)];
        for user in &changed {
            fanout.push(insert_event(tx, user, seqs[user], gkind, group, body()).await?);
        }
        return Ok(GroupOutcome { info, fanout });
    }
    notify.extend(info.members.iter().cloned());
    let owners: Vec<&str> = notify.iter().map(String::as_str).collect();
    let seqs = bump_heads(tx, &owners).await?;
    let mut fanout: Vec<Fanout> = Vec::with_capacity(notify.len());
    for user in &notify {
        fanout.push(
            insert_event(
                tx,
                user,
                seqs[user],
                gkind,
                group,
                pb::timeline_entry::Body::Group(event.clone()),
            )
            .await?,
        );
    }
    Ok(GroupOutcome { info, fanout })
}
