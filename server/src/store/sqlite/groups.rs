//! Groups: membership, and the group events members see in their timelines.
//!
//! Membership changes run on the writer thread like messages, so "is the sender a
//! member" (checked inside [`super::store_message`]) is always answered against the
//! membership as of that send's place in the write order. Every change appends a
//! [`pb::GroupEvent`] to the timeline of each member concerned (the members after the
//! change plus those removed), which is how a device learns it joined a group, on any
//! device, online or not.
//!
//! A **large group** (created as such: read diffusion) differs in one way: its messages,
//! recalls and membership events are entries of one *log* (the timeline of the
//! pseudo-user `#<group>`, see [`crate::store::log_key`]) that members pull and that is
//! pushed to online members, instead of an entry in each member's timeline. Only the
//! members a change concerns (added, removed, leaving; everyone at creation) get a group
//! event in their own timeline, carrying the log position to start from.
//!
//! Rules: any member may add members; only the owner removes others; anyone may leave;
//! when the owner leaves, the longest-standing member becomes owner. The HTTP API
//! (business backend, `by = None`) may do everything.

use rusqlite::{Connection, OptionalExtension, params};
use tern_protocol::pb;

use std::sync::Arc;

use super::StoreError;
use super::timeline::{append_event, insert_event, next_seq};
use super::tx::Tx;
use crate::store::rules;
use crate::store::{Fanout, GroupLimits, GroupOp, GroupOutcome, LogRoute, log_key};

/// Whether `group` exists.
pub(super) fn exists(conn: &Connection, group: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM groups WHERE id = ?1")?
        .exists(params![group])?)
}

/// Whether `group` exists and is a large group (read diffusion).
pub(super) fn is_large(conn: &Connection, group: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT large FROM groups WHERE id = ?1")?
        .query_row(params![group], |r| r.get::<_, bool>(0))
        .optional()?
        .unwrap_or(false))
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
pub(super) fn append_to_log(
    tx: &Tx<'_>,
    group: &str,
    body: pb::timeline_entry::Body,
) -> Result<Fanout, StoreError> {
    let f = append_event(
        tx,
        &log_key(group),
        pb::ConversationKind::Group as i32,
        group,
        body,
    )?;
    Ok(log_fanout(group, f.entry))
}

/// Whether `user` is a member of `group`.
pub(super) fn is_member(conn: &Connection, group: &str, user: &str) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM group_members WHERE grp = ?1 AND user = ?2")?
        .exists(params![group, user])?)
}

/// How many members `group` has.
fn member_count(conn: &Connection, group: &str) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM group_members WHERE grp = ?1")?
        .query_row(params![group], |r| r.get::<_, i64>(0))? as usize)
}

/// Members of `group` in join order, or `None` if it does not exist.
pub(super) fn members(conn: &Connection, group: &str) -> Result<Option<Vec<String>>, StoreError> {
    if !exists(conn, group)? {
        return Ok(None);
    }
    let members = conn
        .prepare_cached("SELECT user FROM group_members WHERE grp = ?1 ORDER BY joined, user")?
        .query_map(params![group], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(Some(members))
}

/// The group's description, if it exists.
pub(super) fn info(conn: &Connection, group: &str) -> Result<Option<pb::GroupInfo>, StoreError> {
    let row: Option<(String, String, i64, bool)> = conn
        .prepare_cached("SELECT name, owner, created_ms, large FROM groups WHERE id = ?1")?
        .query_row(params![group], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?;
    let Some((name, owner, created, large)) = row else {
        return Ok(None);
    };
    let members = members(conn, group)?.unwrap_or_default();
    Ok(Some(pb::GroupInfo {
        group: group.to_owned(),
        name,
        owner,
        member_count: members.len() as u32,
        members,
        created_ms: created as u64,
        large,
    }))
}

/// Every group `user` belongs to.
pub(super) fn of_user(conn: &Connection, user: &str) -> Result<Vec<pb::GroupInfo>, StoreError> {
    let ids = conn
        .prepare_cached("SELECT grp FROM group_members WHERE user = ?1 ORDER BY grp")?
        .query_map(params![user], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(g) = info(conn, &id)? {
            out.push(g);
        }
    }
    Ok(out)
}

fn next_join(tx: &Tx<'_>, group: &str) -> Result<i64, StoreError> {
    Ok(tx
        .prepare_cached("SELECT COALESCE(MAX(joined), 0) + 1 FROM group_members WHERE grp = ?1")?
        .query_row(params![group], |r| r.get(0))?)
}

/// Applies one membership change.
pub(super) fn apply(
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
            let inserted = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO groups (id, name, owner, created_ms, large) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![id, name, owner, tern_protocol::unix_ms() as i64, large])?;
            if inserted == 0 {
                return Err(StoreError::Invalid("group id already exists"));
            }
            for (i, m) in all.iter().enumerate() {
                tx.prepare_cached(
                    "INSERT INTO group_members (grp, user, joined) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![id, m, i as i64 + 1])?;
            }
            (id, owner.clone(), Type::Created, all.clone(), vec![])
        }
        GroupOp::Add { group, by, members } => {
            rules::valid_members(members)?;
            if !exists(tx, group)? {
                return Err(StoreError::GroupNotFound);
            }
            if let Some(by) = by {
                if !is_member(tx, group, by)? {
                    return Err(StoreError::NotAllowed("only members may add members"));
                }
            }
            let max_members = rules::max_members(limits, is_large(tx, group)?);
            if members.len() > max_members {
                return Err(StoreError::GroupFull);
            }
            // One indexed lookup per named member (the request is capped), never a scan
            // of the group per member.
            let mut added: Vec<String> = vec![];
            for m in rules::distinct(members) {
                if !is_member(tx, group, m)? {
                    added.push(m.to_string());
                }
            }
            if member_count(tx, group)? + added.len() > max_members {
                return Err(StoreError::GroupFull);
            }
            for (joined, m) in (next_join(tx, group)?..).zip(&added) {
                tx.prepare_cached(
                    "INSERT INTO group_members (grp, user, joined) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![group, m, joined])?;
            }
            (
                group,
                by.clone().unwrap_or_default(),
                Type::MembersAdded,
                added,
                vec![],
            )
        }
        GroupOp::Remove { group, by, members } => {
            let g = info(tx, group)?.ok_or(StoreError::GroupNotFound)?;
            let removed = rules::removed_members(&g, by.as_ref(), members)?;
            for m in &removed {
                tx.prepare_cached("DELETE FROM group_members WHERE grp = ?1 AND user = ?2")?
                    .execute(params![group, m])?;
            }
            (
                group,
                by.clone().unwrap_or_default(),
                Type::MembersRemoved,
                removed.clone(),
                removed,
            )
        }
        GroupOp::Leave { group, user } => {
            let g = info(tx, group)?.ok_or(StoreError::GroupNotFound)?;
            let heir = rules::leaving(&g, user)?;
            tx.prepare_cached("DELETE FROM group_members WHERE grp = ?1 AND user = ?2")?
                .execute(params![group, user])?;
            if let Some(heir) = heir {
                tx.prepare_cached("UPDATE groups SET owner = ?2 WHERE id = ?1")?
                    .execute(params![group, heir])?;
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
    let info = info(tx, group)?.ok_or(StoreError::GroupNotFound)?;
    if changed.is_empty() {
        // Nothing changed (already members, not members): nothing to announce.
        return Ok(GroupOutcome {
            info,
            fanout: vec![],
        });
    }
    let event = rules::group_event(kind, by, &changed, &info);
    if info.large {
        // One entry in the log for the members; an event in the own timeline of each
        // member concerned, with the log position (a new member starts there).
        let log_seq = next_seq(tx, &log_key(group))?;
        let event = pb::GroupEvent { log_seq, ..event };
        let body = |e: &pb::GroupEvent| pb::timeline_entry::Body::Group(e.clone());
        let logged = insert_event(
            tx,
            &log_key(group),
            log_seq,
            pb::ConversationKind::Group as i32,
            group,
            body(&event),
        )?;
        if matches!(kind, Type::Created | Type::MembersAdded) {
            for user in &changed {
                tx.prepare_cached(
                    "INSERT INTO log_joins (grp, user, seq) VALUES (?1, ?2, ?3)
                     ON CONFLICT (grp, user) DO UPDATE SET seq = excluded.seq",
                )?
                .execute(params![group, user, log_seq as i64])?;
            }
        }
        let mut fanout = vec![log_fanout(group, logged.entry)];
        for user in &changed {
            fanout.push(append_event(
                tx,
                user,
                pb::ConversationKind::Group as i32,
                group,
                body(&event),
            )?);
        }
        return Ok(GroupOutcome { info, fanout });
    }
    notify.extend(info.members.iter().cloned());
    let mut fanout: Vec<Fanout> = Vec::with_capacity(notify.len());
    for user in &notify {
        fanout.push(append_event(
            tx,
            user,
            pb::ConversationKind::Group as i32,
            group,
            pb::timeline_entry::Body::Group(event.clone()),
        )?);
    }
    Ok(GroupOutcome { info, fanout })
}
