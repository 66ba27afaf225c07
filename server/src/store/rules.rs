//! The store's rules that do not depend on the database, as plain functions every
//! backend calls: who a new group starts with and how large a group may grow, the event
//! a membership change announces, the receipts that delivery and reading produce, and
//! who holds a message that is recalled. The backends differ in how they lock and
//! write; what they write is decided here, once.

use std::collections::HashSet;

use tern_protocol::pb;

use super::{GroupLimits, StoreError};

/// Most member ids listed in one group event (every member gets a copy).
pub(crate) const EVENT_MEMBERS_MAX: usize = 64;

/// Refuses a member list with an invalid user id.
pub(crate) fn valid_members(members: &[String]) -> Result<(), StoreError> {
    if members.iter().all(|m| tern_protocol::is_valid_user_id(m)) {
        Ok(())
    } else {
        Err(StoreError::Invalid("invalid member id"))
    }
}

/// The member limit of a group of this kind.
pub(crate) fn max_members(limits: GroupLimits, large: bool) -> usize {
    if large {
        limits.large_members
    } else {
        limits.members
    }
}

/// The members a new group starts with: the owner first, then `members` in the order
/// given, each once; [`StoreError::GroupFull`] above `max`.
pub(crate) fn initial_members(
    owner: &str,
    members: &[String],
    max: usize,
) -> Result<Vec<String>, StoreError> {
    valid_members(members)?;
    if members.len() > max {
        return Err(StoreError::GroupFull);
    }
    let mut all = vec![owner.to_owned()];
    let mut seen: HashSet<&str> = HashSet::from([owner]);
    for m in members {
        if seen.insert(m) {
            all.push(m.clone());
        }
    }
    if all.len() > max {
        return Err(StoreError::GroupFull);
    }
    Ok(all)
}

/// `members` once each, in the order given.
pub(crate) fn distinct(members: &[String]) -> Vec<&String> {
    let mut seen: HashSet<&str> = HashSet::new();
    members.iter().filter(|m| seen.insert(m)).collect()
}

/// The event a membership change announces (`changed`: the members it concerns; the
/// list is left out at creation and above [`EVENT_MEMBERS_MAX`]).
pub(crate) fn group_event(
    kind: pb::group_event::Type,
    by: String,
    changed: &[String],
    info: &pb::GroupInfo,
) -> pb::GroupEvent {
    pb::GroupEvent {
        r#type: kind as i32,
        group: info.group.clone(),
        by_user: by,
        members: if kind == pb::group_event::Type::Created || changed.len() > EVENT_MEMBERS_MAX {
            vec![]
        } else {
            changed.to_vec()
        },
        name: info.name.clone(),
        member_count: info.member_count,
        large: info.large,
        log_seq: 0,
    }
}

/// The DELIVERED receipt a sender gets when `by` stored their direct messages up to
/// `up_to_msg`.
pub(crate) fn delivered_receipt(by: &str, up_to_msg: u64) -> pb::Receipt {
    pb::Receipt {
        status: pb::receipt::Status::Delivered as i32,
        kind: pb::ConversationKind::Direct as i32,
        conversation: by.to_owned(),
        by_user: by.to_owned(),
        up_to_server_msg_id: up_to_msg,
        ..Default::default()
    }
}

/// The READ receipt a sender gets when `reader` read their messages up to `up_to_msg`
/// in `conversation` (the group, or for a direct chat the reader, as the sender sees it).
pub(crate) fn read_receipt_to_sender(
    kind: pb::ConversationKind,
    reader: &str,
    conversation: &str,
    up_to_msg: u64,
) -> pb::Receipt {
    pb::Receipt {
        status: pb::receipt::Status::Read as i32,
        kind: kind as i32,
        conversation: if kind == pb::ConversationKind::Direct {
            reader.to_owned()
        } else {
            conversation.to_owned()
        },
        by_user: reader.to_owned(),
        up_to_server_msg_id: up_to_msg,
        ..Default::default()
    }
}

/// The READ mark in the reader's own timeline (for their other devices): read up to
/// `up_to_seq`, `unread` left, the newest message read `up_to_msg`.
pub(crate) fn own_read_mark(
    kind: pb::ConversationKind,
    reader: &str,
    conversation: &str,
    up_to_msg: u64,
    up_to_seq: u64,
    unread: u64,
) -> pb::Receipt {
    pb::Receipt {
        status: pb::receipt::Status::Read as i32,
        kind: kind as i32,
        conversation: conversation.to_owned(),
        by_user: reader.to_owned(),
        up_to_server_msg_id: up_to_msg,
        up_to_seq,
        unread,
        ..Default::default()
    }
}

/// Whether senders are told who read their messages in this conversation.
pub(crate) fn tells_senders(
    kind: pb::ConversationKind,
    members: Option<usize>,
    max: usize,
) -> bool {
    match kind {
        pb::ConversationKind::Direct => true,
        pb::ConversationKind::Group => members.is_some_and(|m| m <= max),
        pb::ConversationKind::System => false,
    }
}

/// Who gets the recall entry of a message, with the conversation it is in for them:
/// both sides of a direct chat; the sender and the current members of a group (someone
/// who left keeps the original, like a copy already read).
pub(crate) fn recall_holders(
    kind: i32,
    sender: &str,
    recipient: &str,
    group_members: Vec<String>,
) -> Vec<(String, String)> {
    let mut holders: Vec<(String, String)> = vec![];
    if kind == pb::ConversationKind::Group as i32 {
        for m in group_members {
            holders.push((m, recipient.to_owned()));
        }
        if !holders.iter().any(|(u, _)| u == sender) {
            holders.push((sender.to_owned(), recipient.to_owned()));
        }
    } else {
        holders.push((sender.to_owned(), recipient.to_owned()));
        if recipient != sender {
            holders.push((recipient.to_owned(), sender.to_owned()));
        }
    }
    holders
}

/// The body of a recall entry.
pub(crate) fn recall_entry(
    server_msg_id: u64,
    kind: i32,
    conversation: &str,
    by: &str,
) -> pb::timeline_entry::Body {
    pb::timeline_entry::Body::Recall(pb::Recall {
        server_msg_id,
        kind,
        conversation: conversation.to_owned(),
        by_user: by.to_owned(),
    })
}

/// Who a removal takes out of group `g`: the named current members. Only the owner (or
/// the business backend, `by = None`) removes, and the owner leaves rather than removes
/// itself.
pub(crate) fn removed_members(
    g: &pb::GroupInfo,
    by: Option<&String>,
    members: &[String],
) -> Result<Vec<String>, StoreError> {
    if let Some(by) = by {
        if *by != g.owner {
            return Err(StoreError::NotAllowed("only the owner may remove members"));
        }
        if members.contains(by) {
            return Err(StoreError::Invalid("the owner leaves, not removes itself"));
        }
    }
    let named: HashSet<&String> = members.iter().collect();
    Ok(g.members
        .iter()
        .filter(|m| named.contains(m))
        .cloned()
        .collect())
}

/// `user` leaves group `g`: refused unless a member; returns the new owner when the
/// owner leaves (the longest-standing other member, if any).
pub(crate) fn leaving(g: &pb::GroupInfo, user: &str) -> Result<Option<String>, StoreError> {
    if !g.members.iter().any(|m| m == user) {
        return Err(StoreError::NotAllowed("not a member of the group"));
    }
    Ok(if g.owner == user {
        g.members.iter().find(|m| *m != user).cloned()
    } else {
        None
    })
}
