//! The store behaviour suite: what every [`Store`] backend must do, written once
//! against the trait and run against each backend by [`store_suite!`] (as
//! matrix-rust-sdk runs its `statestore_integration_tests!`). A new backend adds one
//! line: `store_suite!(|| async { /* a fresh, empty store */ });`.
//!
//! Backend-specific behaviour (files, backups, migrations) is tested next to the backend.

use tern_protocol::{ClientMsgId, pb};

use super::{GroupLimits, GroupOp, NewMessage, Store, StoreError};

/// A direct message `hello <n>` with client id `[n; 16]`.
pub(crate) fn msg(from: &str, to: &str, n: u8) -> NewMessage {
    NewMessage {
        sender: from.into(),
        client_msg_id: ClientMsgId([n; 16]),
        recipient: to.into(),
        kind: pb::ConversationKind::Direct,
        content_type: 0,
        body: bytes::Bytes::from(format!("hello {n}")),
        client_ts_ms: 1,
        require_known_recipient: false,
        to_service: false,
        from_backend: false,
        device: String::new(),
        send_seq: 0,
    }
}

/// Behaviour every backend must show (see the module docs).
pub(crate) async fn store_is_idempotent_and_assigns_contiguous_seqs(store: &dyn Store) {
    let a = store.store_message(msg("alice", "bob", 1)).await.unwrap();
    assert!(!a.duplicate);
    assert_eq!(a.sender_seq, 1);
    assert_eq!(
        a.fanout
            .iter()
            .map(|f| (f.user.as_str(), f.entry.seq))
            .collect::<Vec<_>>(),
        vec![("alice", 1), ("bob", 1)]
    );
    let again = store.store_message(msg("alice", "bob", 1)).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(
        (again.server_msg_id, again.sender_seq),
        (a.server_msg_id, a.sender_seq)
    );
    assert!(again.fanout.is_empty());
    // Same client id from another sender is a different message.
    let c = store.store_message(msg("carol", "bob", 1)).await.unwrap();
    assert!(!c.duplicate);
    assert_eq!(store.head_seq("bob").await.unwrap(), 2);

    let page = store.timeline("bob", 0, 0, 1).await.unwrap();
    assert_eq!((page.entries.len(), page.more, page.head_seq), (1, true, 2));
    let page = store.timeline("bob", 1, 0, 10).await.unwrap();
    assert_eq!((page.entries[0].seq, page.more), (2, false));

    let sums = store.summaries("bob", 5, 10).await.unwrap();
    assert_eq!(sums.conversations.len(), 2);
    assert_eq!(
        sums.conversations[0].conversation, "carol",
        "most recent first"
    );
    assert_eq!(sums.conversations[0].unread, 1);
    let alice_view = store.summaries("alice", 5, 10).await.unwrap();
    assert_eq!(
        alice_view.conversations[0].unread, 0,
        "own messages are not unread"
    );
}

/// Behaviour every backend must show (see the module docs).
pub(crate) async fn delivery_ack_produces_one_receipt_per_sender_once(store: &dyn Store) {
    for n in 1..=3 {
        store.store_message(msg("alice", "bob", n)).await.unwrap();
    }
    let last = store.store_message(msg("carol", "bob", 9)).await.unwrap();
    let fan = store.ack_delivered("bob", "phone", 4).await.unwrap();
    let users: Vec<&str> = fan.iter().map(|f| f.user.as_str()).collect();
    assert_eq!(users, vec!["alice", "carol"]);
    match &fan[1].entry.body {
        Some(pb::timeline_entry::Body::Receipt(r)) => {
            assert_eq!(r.up_to_server_msg_id, last.server_msg_id);
            assert_eq!(r.by_user, "bob");
        }
        other => panic!("expected a receipt, got {other:?}"),
    }
    assert!(
        store
            .ack_delivered("bob", "phone", 4)
            .await
            .unwrap()
            .is_empty(),
        "repeat ack is a no-op"
    );
    assert!(
        store
            .ack_delivered("bob", "tablet", 4)
            .await
            .unwrap()
            .is_empty(),
        "second device: no new receipts"
    );
    // Receipts are in alice's timeline, readable by sync.
    let page = store.timeline("alice", 0, 0, 10).await.unwrap();
    assert_eq!(page.entries.len(), 4);
}

/// Behaviour every backend must show: a device's delivery cursor is clamped to the
/// timeline's head and never moves back, and an ACK from a user with no timeline is a
/// no-op.
pub(crate) async fn a_delivery_cursor_is_clamped_to_the_head_and_never_moves_back(
    store: &dyn Store,
) {
    assert!(
        store
            .ack_delivered("nobody", "phone", 5)
            .await
            .unwrap()
            .is_empty(),
        "no timeline: nothing to acknowledge"
    );
    for n in 1..=2 {
        store.store_message(msg("alice", "bob", n)).await.unwrap();
    }
    // Far above the head (2): taken as the head.
    let fan = store.ack_delivered("bob", "phone", 99).await.unwrap();
    assert_eq!(fan.len(), 1, "one receipt to alice");
    let third = store.store_message(msg("alice", "bob", 3)).await.unwrap();
    assert!(
        store
            .ack_delivered("bob", "phone", 1)
            .await
            .unwrap()
            .is_empty(),
        "an older ACK moves nothing"
    );
    // Had the cursor been set to 99, or moved back to 1, this would differ.
    let fan = store.ack_delivered("bob", "phone", 3).await.unwrap();
    assert_eq!(fan.len(), 1);
    match &fan[0].entry.body {
        Some(pb::timeline_entry::Body::Receipt(r)) => {
            assert_eq!(r.up_to_server_msg_id, third.server_msg_id);
        }
        other => panic!("expected a receipt, got {other:?}"),
    }
    assert!(
        store
            .ack_delivered("bob", "phone", 3)
            .await
            .unwrap()
            .is_empty()
    );
}

const LIMITS: GroupLimits = GroupLimits {
    members: 10,
    large_members: 100,
};

fn group_msg(from: &str, group: &str, n: u8) -> NewMessage {
    NewMessage {
        kind: pb::ConversationKind::Group,
        ..msg(from, group, n)
    }
}

async fn create_group(store: &dyn Store, members: &[&str]) -> String {
    store
        .group_op(
            GroupOp::Create {
                id: "g1".into(),
                name: "team".into(),
                owner: members[0].into(),
                members: members.iter().map(|m| m.to_string()).collect(),
                large: false,
            },
            LIMITS,
        )
        .await
        .unwrap()
        .info
        .group
}

/// Behaviour every backend must show (see the module docs).
pub(crate) async fn group_messages_reach_every_member_and_membership_is_checked_per_send(
    store: &dyn Store,
) {
    let g = create_group(store, &["alice", "bob", "carol"]).await;
    // Creation is a group event in every member's timeline.
    assert_eq!(store.head_seq("carol").await.unwrap(), 1);
    let sent = store.store_message(group_msg("bob", &g, 1)).await.unwrap();
    let mut users: Vec<&str> = sent.fanout.iter().map(|f| f.user.as_str()).collect();
    users[1..].sort();
    assert_eq!(
        users,
        vec!["bob", "alice", "carol"],
        "the sender's own entry first"
    );
    let seqs: Vec<u64> = sent.fanout.iter().map(|f| f.entry.seq).collect();
    assert_eq!(seqs, vec![2, 2, 2], "each after the group's creation event");
    let alice = store.timeline("alice", 1, 0, 10).await.unwrap();
    assert_eq!(alice.entries.len(), 1);
    let carol = store.summaries("carol", 5, 10).await.unwrap();
    assert_eq!(
        (
            carol.conversations[0].conversation.as_str(),
            carol.conversations[0].unread
        ),
        ("g1", 1)
    );
    assert!(matches!(
        store.store_message(group_msg("mallory", &g, 2)).await,
        Err(StoreError::NotAllowed(_))
    ));
    assert!(matches!(
        store.store_message(group_msg("bob", "nope", 3)).await,
        Err(StoreError::GroupNotFound)
    ));
    // Only the owner removes; a removed member can no longer send.
    let remove = |by: &str| GroupOp::Remove {
        group: g.clone(),
        by: Some(by.into()),
        members: vec!["carol".into()],
    };
    assert!(matches!(
        store.group_op(remove("bob"), LIMITS).await,
        Err(StoreError::NotAllowed(_))
    ));
    let out = store.group_op(remove("alice"), LIMITS).await.unwrap();
    assert_eq!(out.info.members, vec!["alice", "bob"]);
    assert_eq!(out.fanout.len(), 3, "the removed member is told too");
    assert!(matches!(
        store.store_message(group_msg("carol", &g, 4)).await,
        Err(StoreError::NotAllowed(_))
    ));
    // Size limit, and the owner leaving hands the group over.
    let add = GroupOp::Add {
        group: g.clone(),
        by: Some("bob".into()),
        members: (0..9).map(|i| format!("u{i}")).collect(),
    };
    assert!(matches!(
        store.group_op(add, LIMITS).await,
        Err(StoreError::GroupFull)
    ));
    let left = store
        .group_op(
            GroupOp::Leave {
                group: g.clone(),
                user: "alice".into(),
            },
            LIMITS,
        )
        .await
        .unwrap();
    assert_eq!(left.info.owner, "bob");
    assert_eq!(store.groups_of("bob").await.unwrap().len(), 1);
    assert!(store.groups_of("alice").await.unwrap().is_empty());
}

/// Behaviour every backend must show (see the module docs).
pub(crate) async fn a_large_group_writes_one_log_entry_per_message_not_one_per_member(
    store: &dyn Store,
) {
    let members: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
    let created = store
        .group_op(
            GroupOp::Create {
                id: "big".into(),
                name: "town hall".into(),
                owner: "u0".into(),
                members: members.clone(),
                large: true,
            },
            LIMITS,
        )
        .await
        .unwrap();
    assert!(created.info.large);
    // The log's creation event, and one own-timeline event per (initial) member.
    assert_eq!(created.fanout.len(), 51);
    assert!(created.fanout[0].log.is_some());
    assert_eq!(store.head_seq("u7").await.unwrap(), 1);
    let sent = store
        .store_message(group_msg("u3", "big", 1))
        .await
        .unwrap();
    assert_eq!((sent.sender_seq, sent.log_seq), (0, 2));
    assert_eq!(sent.fanout.len(), 1);
    assert_eq!(sent.fanout[0].log.as_ref().unwrap().group, "big");
    assert_eq!(
        store.head_seq("u7").await.unwrap(),
        1,
        "no entry per member"
    );
    assert_eq!(store.head_seq("u3").await.unwrap(), 1, "nor for the sender");
    let again = store
        .store_message(group_msg("u3", "big", 1))
        .await
        .unwrap();
    assert_eq!((again.duplicate, again.log_seq), (true, 2));
    assert!(store.log_member("u7", "big").await.unwrap());
    assert!(!store.log_member("mallory", "big").await.unwrap());
    let page = store.timeline("#big", 0, 0, 10).await.unwrap();
    assert_eq!(page.entries.len(), 2);
    // Summaries in log positions; read marks in log positions.
    let (logs, _) = store.logs("u7", 5).await.unwrap();
    assert_eq!(
        (logs[0].latest_seq, logs[0].unread, logs[0].last.len()),
        (2, 1, 1)
    );
    let fan = store
        .mark_read("u7", pb::ConversationKind::Group, "big", 2, 100)
        .await
        .unwrap();
    match &fan[0].entry.body {
        Some(pb::timeline_entry::Body::Receipt(r)) => {
            assert_eq!(
                (r.log.as_str(), r.up_to_seq, r.at_seq, r.unread),
                ("big", 2, 2, 0)
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.logs("u7", 5).await.unwrap().0[0].unread, 0);
    let (hist, more) = store
        .history("u7", pb::ConversationKind::Group, "big", 0, 10)
        .await
        .unwrap();
    assert_eq!((hist.len(), more), (1, false));
    // A recall is one log entry.
    let fan = store
        .recall("u3", sent.server_msg_id, 60_000)
        .await
        .unwrap();
    assert_eq!((fan.len(), fan[0].entry.seq), (1, 3));
    // Over the large limit.
    let add = GroupOp::Add {
        group: "big".into(),
        by: Some("u1".into()),
        members: (0..60).map(|i| format!("x{i}")).collect(),
    };
    assert!(matches!(
        store.group_op(add, LIMITS).await,
        Err(StoreError::GroupFull)
    ));
}

/// Behaviour every backend must show (see the module docs).
pub(crate) async fn read_marks_reset_unread_and_tell_senders_once(store: &dyn Store) {
    for n in 1..=3 {
        store.store_message(msg("alice", "bob", n)).await.unwrap();
    }
    let fan = store
        .mark_read("bob", pb::ConversationKind::Direct, "alice", 2, 100)
        .await
        .unwrap();
    assert_eq!(fan.len(), 2, "bob's own mark and alice's receipt");
    match &fan[0].entry.body {
        Some(pb::timeline_entry::Body::Receipt(r)) => {
            assert_eq!((r.by_user.as_str(), r.up_to_seq), ("bob", 2));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fan[1].user, "alice");
    let bob = store.summaries("bob", 0, 10).await.unwrap();
    assert_eq!(bob.conversations[0].unread, 1, "one message above the mark");
    assert!(
        store
            .mark_read("bob", pb::ConversationKind::Direct, "alice", 1, 100)
            .await
            .unwrap()
            .is_empty(),
        "an older mark changes nothing"
    );
}

/// Behaviour every backend must show (see the module docs).
pub(crate) async fn recall_erases_content_within_the_window_only(store: &dyn Store) {
    let m = store.store_message(msg("alice", "bob", 1)).await.unwrap();
    assert!(matches!(
        store.recall("bob", m.server_msg_id, 60_000).await,
        Err(StoreError::MessageNotFound)
    ));
    let fan = store
        .recall("alice", m.server_msg_id, 60_000)
        .await
        .unwrap();
    assert_eq!(fan.len(), 2);
    let page = store.timeline("bob", 0, 0, 10).await.unwrap();
    match &page.entries[0].body {
        Some(pb::timeline_entry::Body::Message(m)) => {
            assert!(m.recalled && m.body.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        page.entries[1].body,
        Some(pb::timeline_entry::Body::Recall(_))
    ));
    let old = store.store_message(msg("alice", "bob", 2)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(matches!(
        store.recall("alice", old.server_msg_id, 1).await,
        Err(StoreError::RecallExpired)
    ));
}

/// Behaviour every backend must show (see the module docs).
pub(crate) async fn history_pages_back_through_one_conversation(store: &dyn Store) {
    for n in 1..=5 {
        store.store_message(msg("alice", "bob", n)).await.unwrap();
        store.store_message(msg("carol", "bob", n)).await.unwrap();
    }
    let (page, more) = store
        .history("bob", pb::ConversationKind::Direct, "alice", 0, 3)
        .await
        .unwrap();
    let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
    assert_eq!((seqs, more), (vec![9, 7, 5], true));
    let (page, more) = store
        .history("bob", pb::ConversationKind::Direct, "alice", 5, 3)
        .await
        .unwrap();
    assert_eq!(
        (page.iter().map(|e| e.seq).collect::<Vec<_>>(), more),
        (vec![3, 1], false)
    );
}

/// Behaviour every backend must show (see the module docs).
pub(crate) async fn c2s_messages_queue_a_webhook_in_the_same_write(store: &dyn Store) {
    let m = NewMessage {
        to_service: true,
        ..msg("alice", "bot", 1)
    };
    store.store_message(m.clone()).await.unwrap();
    store.store_message(m).await.unwrap(); // a resend: no second delivery
    assert_eq!(store.webhook_backlog("c2s").await.unwrap(), 1);
    assert_eq!(store.webhook_backlog("push").await.unwrap(), 0);
    let due = store.webhooks_due("c2s", u64::MAX, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    // Each hook has its own queue.
    assert!(
        store
            .webhooks_due("push", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let v: serde_json::Value = serde_json::from_slice(&due[0].payload).unwrap();
    assert_eq!(
        (v["sender"].as_str(), v["text"].as_str()),
        (Some("alice"), Some("hello 1"))
    );
    store.webhook_retry(due[0].id, 1_000).await.unwrap();
    assert!(store.webhooks_due("c2s", 999, 10).await.unwrap().is_empty());
    assert_eq!(
        store.webhooks_due("c2s", 1_000, 10).await.unwrap()[0].attempts,
        1
    );
    store.webhook_done(due[0].id).await.unwrap();
    assert_eq!(store.webhook_backlog("c2s").await.unwrap(), 0);
    assert!(
        store
            .webhooks_due("c2s", u64::MAX, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Behaviour every backend must show (see the module docs): a device's sends are taken
/// only in their send order; a duplicate is answered before the order is checked; a
/// message refused for good uses up its number; `skip_send` does the same for refusals
/// made before the store; `next_send_seq` says where the device stands.
pub(crate) async fn a_devices_sends_are_taken_only_in_send_order(store: &dyn Store) {
    let ordered = |n: u8, send_seq: u64| NewMessage {
        device: "phone".into(),
        send_seq,
        ..msg("alice", "bob", n)
    };
    assert_eq!(store.next_send_seq("alice", "phone").await.unwrap(), 1);
    store.store_message(ordered(1, 1)).await.unwrap();
    // Ahead of a missing one: refused, with the one expected.
    assert!(matches!(
        store.store_message(ordered(3, 3)).await,
        Err(StoreError::OutOfOrder { expected: 2 })
    ));
    // Behind (not a duplicate): refused the same way.
    assert!(matches!(
        store.store_message(ordered(9, 1)).await,
        Err(StoreError::OutOfOrder { expected: 2 })
    ));
    // A resend of a stored message is its stored result, whatever its number now.
    assert!(store.store_message(ordered(1, 7)).await.unwrap().duplicate);
    store.store_message(ordered(2, 2)).await.unwrap();
    // Refused for good (a group that does not exist) still uses up its number ...
    let bad = NewMessage {
        kind: pb::ConversationKind::Group,
        ..ordered(4, 3)
    };
    assert!(matches!(
        store.store_message(bad).await,
        Err(StoreError::GroupNotFound)
    ));
    assert_eq!(store.next_send_seq("alice", "phone").await.unwrap(), 4);
    // ... and so does a refusal made before the store, only in its turn.
    assert!(matches!(
        store.skip_send("alice", "phone", 5).await,
        Err(StoreError::OutOfOrder { expected: 4 })
    ));
    store.skip_send("alice", "phone", 4).await.unwrap();
    store.store_message(ordered(5, 5)).await.unwrap();
    // Other devices and unordered sends are not affected.
    assert_eq!(store.next_send_seq("alice", "tablet").await.unwrap(), 1);
    store.store_message(msg("alice", "bob", 6)).await.unwrap();
    assert_eq!(store.next_send_seq("alice", "phone").await.unwrap(), 6);
    let texts: Vec<String> = store
        .timeline("bob", 0, 0, 10)
        .await
        .unwrap()
        .entries
        .iter()
        .filter_map(|e| match &e.body {
            Some(pb::timeline_entry::Body::Message(m)) => {
                Some(String::from_utf8(m.body.to_vec()).unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(texts, ["hello 1", "hello 2", "hello 5", "hello 6"]);
}

/// Expands to one `#[tokio::test]` per behaviour of the suite; `$make` is an async
/// closure that returns a fresh, empty store (and anything it must keep alive), or
/// `None` when the backend is not available here (see `postgres::testing`).
///
/// `store_suite!(@run $make)` is instead an expression: a future that runs every case
/// in turn, each on a fresh store from `$make` (a closure returning one), for a test
/// that watches a backend through the whole suite (`sqlite::plans`). The cases are
/// listed once, in the `@cases` arm.
macro_rules! store_suite {
    (@cases $then:ident $($arg:tt)*) => {
        $crate::store::suite::store_suite! { $then $($arg)* ;
            a_devices_sends_are_taken_only_in_send_order,
            store_is_idempotent_and_assigns_contiguous_seqs,
            delivery_ack_produces_one_receipt_per_sender_once,
            a_delivery_cursor_is_clamped_to_the_head_and_never_moves_back,
            group_messages_reach_every_member_and_membership_is_checked_per_send,
            a_large_group_writes_one_log_entry_per_message_not_one_per_member,
            read_marks_reset_unread_and_tell_senders_once,
            recall_erases_content_within_the_window_only,
            history_pages_back_through_one_conversation,
            c2s_messages_queue_a_webhook_in_the_same_write
        }
    };
    (tests $make:expr ; $($case:ident),*) => {
        $(
            #[tokio::test]
            async fn $case() {
                let Some((_keep, store)) = ($make)().await else { return };
                $crate::store::suite::$case(&*store).await;
            }
        )*
    };
    (run $make:expr ; $($case:ident),*) => {
        async {
            $(
                let store = ($make)();
                $crate::store::suite::$case(&store).await;
            )*
        }
    };
    (@run $make:expr) => {
        $crate::store::suite::store_suite!(@cases run $make)
    };
    ($make:expr) => {
        $crate::store::suite::store_suite!(@cases tests $make);
    };
}
pub(crate) use store_suite;
