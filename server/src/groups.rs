//! Group operations, shared by the protocol (`GroupRequest`) and the HTTP API.
//!
//! Validation and the permission rules live in the store (so they are checked in write
//! order); this module turns a request into a [`GroupOp`], names new groups, and pushes
//! the resulting group events to members who are online.

use std::sync::Arc;

use tern_protocol::pb;
use tern_protocol::pb::group_request::Op;

use crate::state::Shared;
use crate::store::{GroupLimits, GroupOp, StoreError};

/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 256;

/// Most members one request may name (create, add, remove). The checks are done here,
/// before the request reaches the single writer: a request naming 50,000 members is
/// refused for the price of reading its length. Larger groups grow by several adds.
pub const MAX_MEMBERS_PER_REQUEST: usize = 2_000;

/// Checks the members a request names: at most [`MAX_MEMBERS_PER_REQUEST`], every one a
/// valid user id (one pass, no store work).
fn check_members(members: &[String]) -> Result<(), StoreError> {
    if members.len() > MAX_MEMBERS_PER_REQUEST {
        return Err(StoreError::Invalid(
            "too many members in one request (at most 2000)",
        ));
    }
    if !members.iter().all(|m| tern_protocol::is_valid_user_id(m)) {
        return Err(StoreError::Invalid("invalid member id"));
    }
    Ok(())
}

/// Groups as a client receives them: within one answer's bytes
/// ([`tern_protocol::page`]), members cut in join order where they do not fit
/// (`member_count` stays the whole count), groups cut where even that does not fit.
/// `true` if groups were left out.
pub fn fit_for_client(groups: &mut Vec<pb::GroupInfo>) -> bool {
    let mut budget = tern_protocol::page::PageBudget::new();
    let mut kept = 0;
    for g in groups.iter_mut() {
        let members = std::mem::take(&mut g.members);
        if !budget.take_msg(g) {
            break;
        }
        kept += 1;
        for m in members {
            if !budget.take(m.len()) {
                break;
            }
            g.members.push(m);
        }
    }
    let more = kept < groups.len();
    groups.truncate(kept);
    more
}

/// A fresh group id: `g` followed by 16 hex digits (valid as a conversation id).
pub fn new_group_id() -> String {
    format!("g{:016x}", rand::random::<u64>())
}

/// Runs one group request for `by` (`None` = the business backend through the HTTP
/// API) and returns the group(s) it concerns.
pub async fn handle(
    shared: &Arc<Shared>,
    by: Option<&str>,
    op: Option<Op>,
) -> Result<Vec<pb::GroupInfo>, StoreError> {
    let limits = GroupLimits {
        members: shared.config.max_group_members,
        large_members: shared.config.max_large_group_members,
    };
    let op = match op.ok_or(StoreError::Invalid("no group operation"))? {
        Op::Create(c) => {
            if c.name.len() > MAX_GROUP_NAME {
                return Err(StoreError::Invalid("group name too long"));
            }
            check_members(&c.members)?;
            let owner = match by {
                Some(u) => u.to_owned(),
                // The backend names an owner as the first member.
                None => c
                    .members
                    .first()
                    .cloned()
                    .ok_or(StoreError::Invalid("a group needs a member"))?,
            };
            GroupOp::Create {
                id: new_group_id(),
                name: c.name,
                owner,
                members: c.members,
                large: c.large,
            }
        }
        Op::Add(m) => {
            check_members(&m.members)?;
            GroupOp::Add {
                group: m.group,
                by: by.map(str::to_owned),
                members: m.members,
            }
        }
        Op::Remove(m) => {
            check_members(&m.members)?;
            GroupOp::Remove {
                group: m.group,
                by: by.map(str::to_owned),
                members: m.members,
            }
        }
        Op::Leave(g) => GroupOp::Leave {
            group: g.group,
            user: by
                .ok_or(StoreError::Invalid("only a member can leave"))?
                .to_owned(),
        },
        Op::Info(g) => {
            let info = shared
                .store
                .group_info(&g.group)
                .await?
                .ok_or(StoreError::GroupNotFound)?;
            if let Some(user) = by {
                if !info.members.iter().any(|m| m == user) {
                    return Err(StoreError::NotAllowed("not a member of the group"));
                }
            }
            return Ok(vec![info]);
        }
        Op::List(_) => {
            let user = by.ok_or(StoreError::Invalid("list needs a user"))?;
            return shared.store.groups_of(user).await;
        }
    };
    let group = match &op {
        GroupOp::Create { id, .. } => id.clone(),
        GroupOp::Add { group, .. }
        | GroupOp::Remove { group, .. }
        | GroupOp::Leave { group, .. } => group.clone(),
    };
    let outcome = shared.store.group_op(op, limits).await;
    // Whatever happened, the routing cache must not outlive a membership change.
    shared.log_members.remove(&group);
    let outcome = outcome?;
    metrics::counter!("tern_group_ops_total").increment(1);
    shared.fan_out(outcome.fanout, None);
    Ok(vec![outcome.info])
}
