//! The messaging model end to end (issue 7): groups, multi-device, read marks and
//! receipts, recall, history roaming, the offline push webhook and c2s webhooks — a
//! real server on loopback, real clients, a local HTTP receiver for the webhooks.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tern_client::{Client, ClientError, ClientEvent, ConversationKind, MessageStatus, Platform};
use tern_protocol::pb;

/// Runs a blocking client call without stalling the test runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn group_texts(c: &Client, group: &str) -> Vec<(String, String)> {
    let mut m = c
        .messages(ConversationKind::Group, group, None, 10_000)
        .unwrap();
    m.reverse();
    m.iter()
        .map(|m| (m.sender.clone(), m.text().unwrap_or_default().to_owned()))
        .collect()
}

fn unread(c: &Client, kind: ConversationKind, id: &str) -> u64 {
    c.conversations()
        .unwrap()
        .into_iter()
        .find(|x| x.kind == kind && x.id == id)
        .map_or(0, |x| x.unread)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_of_100_reaches_online_members_live_and_offline_members_by_sync() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path()).await;
    let names: Vec<String> = (0..100).map(|i| format!("u{i:03}")).collect();
    let dirs: Vec<_> = (0..100).map(|_| tempfile::tempdir().unwrap()).collect();
    // Ten members online; ninety have never logged in.
    let online: Vec<_> = (0..10)
        .map(|i| {
            client(
                &s,
                dirs[i].path(),
                &names[i],
                &format!("{}-phone", names[i]),
            )
        })
        .collect();
    for (c, _) in &online {
        connected(c).await;
    }
    let group = blocking(|| online[0].0.create_group("all hands", &names[1..])).unwrap();
    assert_eq!((group.owner.as_str(), group.members.len()), ("u000", 100));
    let gid = group.id.clone();
    until("every online member to learn of the group", || {
        online
            .iter()
            .all(|(c, _)| c.group_name(&gid).unwrap().as_deref() == Some("all hands"))
    })
    .await;

    // Three members send, interleaved.
    for i in 0..10 {
        for (n, (c, _)) in online.iter().take(3).enumerate() {
            c.send_group_text(&gid, &format!("{n}:{i}")).unwrap();
        }
    }
    until("30 messages on every online member", || {
        online.iter().all(|(c, _)| group_texts(c, &gid).len() == 30)
    })
    .await;
    let reference = group_texts(&online[0].0, &gid);
    for (c, _) in &online {
        assert_eq!(group_texts(c, &gid), reference, "same order everywhere");
    }
    for (n, name) in names.iter().take(3).enumerate() {
        let mine: Vec<String> = reference
            .iter()
            .filter(|(s, _)| s == name)
            .map(|(_, t)| t.clone())
            .collect();
        let sent: Vec<String> = (0..10).map(|i| format!("{n}:{i}")).collect();
        assert_eq!(mine, sent, "each sender's messages in the order sent");
    }
    assert_eq!(unread(&online[5].0, ConversationKind::Group, &gid), 30);
    assert_eq!(unread(&online[1].0, ConversationKind::Group, &gid), 20);

    // Five of the offline members come online and catch up by sync.
    let late: Vec<_> = (50..55)
        .map(|i| client(&s, dirs[i].path(), &names[i], "phone"))
        .collect();
    until("the late members to sync the group", || {
        late.iter().all(|(c, _)| group_texts(c, &gid).len() == 30)
    })
    .await;
    for (c, _) in &late {
        assert_eq!(group_texts(c, &gid), reference);
        assert_eq!(unread(c, ConversationKind::Group, &gid), 30);
    }

    // Membership is checked on every send.
    let mdir = tempfile::tempdir().unwrap();
    let (mallory, _) = client(&s, mdir.path(), "mallory", "m");
    connected(&mallory).await;
    let m = mallory.send_group_text(&gid, "let me in").unwrap();
    until("the outsider's send to fail", || {
        matches!(
            mallory.message(m.local_id).unwrap().unwrap().status,
            MessageStatus::Failed { .. }
        )
    })
    .await;
    blocking(|| online[0].0.remove_group_members(&gid, &[names[9].clone()])).unwrap();
    let refused = blocking(|| online[1].0.remove_group_members(&gid, &[names[2].clone()]));
    assert!(
        matches!(&refused, Err(ClientError::Refused { code, .. }) if code == "NOT_ALLOWED"),
        "only the owner removes: {refused:?}"
    );
    let m = online[9].0.send_group_text(&gid, "still here?").unwrap();
    until("the removed member's send to fail", || {
        matches!(
            online[9].0.message(m.local_id).unwrap().unwrap().status,
            MessageStatus::Failed { .. }
        )
    })
    .await;
    let info = blocking(|| online[3].0.group_info(&gid)).unwrap();
    assert_eq!(info.members.len(), 99);
    assert_eq!(blocking(|| late[0].0.groups()).unwrap().len(), 1);
    for (c, _) in online.iter().chain(&late) {
        c.shutdown();
    }
    mallory.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_three_device_user_sees_one_conversation_and_one_unread_count() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path()).await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let device = |i: usize, platform: Platform| {
        client_with(&s, dirs[i].path(), "alice", &format!("alice-{i}"), |c| {
            c.platform = platform
        })
    };
    let (phone, _) = device(0, Platform::Android);
    let (tablet, _) = device(1, Platform::Ios);
    let (desktop, _) = device(2, Platform::Desktop);
    let (bob, bob_events) = client(&s, dirs[3].path(), "bob", "bob-phone");
    for c in [&phone, &tablet, &desktop, &bob] {
        connected(c).await;
    }
    for i in 0..5 {
        bob.send_text("alice", &format!("b{i}")).unwrap();
    }
    until("all three devices to get bob's messages", || {
        [&phone, &tablet, &desktop]
            .iter()
            .all(|c| texts(c, "bob").len() == 5)
    })
    .await;
    for i in 0..3 {
        phone.send_text("bob", &format!("p{i}")).unwrap();
    }
    for i in 0..2 {
        desktop.send_text("bob", &format!("d{i}")).unwrap();
    }
    until("each device to show all ten", || {
        [&phone, &tablet, &desktop]
            .iter()
            .all(|c| texts(c, "bob").len() == 10)
    })
    .await;
    let order = texts(&phone, "bob");
    assert_eq!(
        texts(&tablet, "bob"),
        order,
        "sent from other devices, same order"
    );
    assert_eq!(texts(&desktop, "bob"), order);
    let own_on_tablet = tablet
        .messages(ConversationKind::Direct, "bob", None, 100)
        .unwrap()
        .into_iter()
        .filter(|m| m.outgoing)
        .count();
    assert_eq!(
        own_on_tablet, 5,
        "the phone's and desktop's sends are outgoing on the tablet"
    );

    // The desktop goes offline; the phone reads; two more arrive.
    desktop.shutdown();
    for c in [&phone, &tablet] {
        assert_eq!(unread(c, ConversationKind::Direct, "bob"), 5);
    }
    phone.mark_read(ConversationKind::Direct, "bob").unwrap();
    until("the tablet to apply the phone's read mark", || {
        unread(&tablet, ConversationKind::Direct, "bob") == 0
    })
    .await;
    until("bob to see his messages read", || {
        bob.messages(ConversationKind::Direct, "alice", None, 100)
            .unwrap()
            .iter()
            .filter(|m| m.outgoing)
            .all(|m| m.status == MessageStatus::Read)
    })
    .await;
    until("bob's Read event", || {
        bob_events.events.lock().unwrap().iter().any(|e| {
            matches!(
                e,
                ClientEvent::MessageStatusChanged {
                    status: MessageStatus::Read,
                    ..
                }
            )
        })
    })
    .await;
    bob.send_text("alice", "b5").unwrap();
    bob.send_text("alice", "b6").unwrap();
    until("two new unread on phone and tablet", || {
        unread(&phone, ConversationKind::Direct, "bob") == 2
            && unread(&tablet, ConversationKind::Direct, "bob") == 2
    })
    .await;
    // The desktop comes back (same install) and agrees on everything.
    let (desktop, _) = device(2, Platform::Desktop);
    until("the desktop to catch up", || {
        texts(&desktop, "bob").len() == 12
    })
    .await;
    assert_eq!(texts(&desktop, "bob"), texts(&phone, "bob"));
    until("the desktop's unread count", || {
        unread(&desktop, ConversationKind::Direct, "bob") == 2
    })
    .await;
    assert_eq!(
        desktop.total_unread().unwrap(),
        phone.total_unread().unwrap()
    );
    for c in [&phone, &tablet, &desktop, &bob] {
        c.shutdown();
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_senders_see_read_counts_and_recalls_reach_every_device() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server_with(sdir.path(), |c| {
        c.recall_window = Duration::from_millis(1500)
    })
    .await;
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let (alice, alice_events) = client(&s, dirs[0].path(), "alice", "a1");
    let (alice2, alice2_events) = client_with(&s, dirs[1].path(), "alice", "a2", |c| {
        c.platform = Platform::Desktop
    });
    let (bob, bob_events) = client(&s, dirs[2].path(), "bob", "b");
    let (carol, _) = client(&s, dirs[3].path(), "carol", "c");
    for c in [&alice, &alice2, &bob, &carol] {
        connected(c).await;
    }
    let g = blocking(|| alice.create_group("trio", &["bob".into(), "carol".into()]))
        .unwrap()
        .id;
    let sent = alice.send_group_text(&g, "lunch?").unwrap();
    until("bob and carol to receive it", || {
        group_texts(&bob, &g).len() == 1 && group_texts(&carol, &g).len() == 1
    })
    .await;
    bob.mark_read(ConversationKind::Group, &g).unwrap();
    until("read count 1", || {
        alice.message(sent.local_id).unwrap().unwrap().read_count == 1
    })
    .await;
    carol.mark_read(ConversationKind::Group, &g).unwrap();
    carol.mark_read(ConversationKind::Group, &g).unwrap(); // twice: counted once
    until("read count 2", || {
        alice.message(sent.local_id).unwrap().unwrap().read_count == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(alice.message(sent.local_id).unwrap().unwrap().read_count, 2);
    until("the read-count event", || {
        alice_events.events.lock().unwrap().iter().any(|e| {
            matches!(
                e,
                ClientEvent::MessageUpdated(m) if m.read_count == 2
            )
        })
    })
    .await;

    // Recall a direct message: bob's copy and alice's other device change.
    let oops = alice.send_text("bob", "wrong chat").unwrap();
    until("bob to get it", || texts(&bob, "alice") == ["wrong chat"]).await;
    until("the send result", || {
        alice
            .message(oops.local_id)
            .unwrap()
            .unwrap()
            .server_msg_id
            .is_some()
    })
    .await;
    blocking(|| alice.recall(oops.local_id)).unwrap();
    until("the recall on bob's device", || {
        bob.messages(ConversationKind::Direct, "alice", None, 10)
            .unwrap()
            .iter()
            .all(|m| m.recalled && m.body.is_empty())
    })
    .await;
    until("the recall on alice's other device", || {
        alice2
            .messages(ConversationKind::Direct, "bob", None, 10)
            .unwrap()
            .iter()
            .any(|m| m.recalled)
    })
    .await;
    // Alice's own copy changes when the recall's timeline entry reaches her device, a
    // push like the others': it may come after theirs (CI once checked it first).
    until("the recall on alice's own device", || {
        alice.message(oops.local_id).unwrap().unwrap().recalled
    })
    .await;
    for ev in [&bob_events, &alice2_events] {
        // Events reach the listener on the event thread, a moment after the commit.
        until("the MessageUpdated event", || {
            ev.events.lock().unwrap().iter().any(|e| {
                matches!(
                    e,
                    ClientEvent::MessageUpdated(m) if m.recalled
                )
            })
        })
        .await;
    }
    // Outside the window, and not one's own: refused.
    let late = alice.send_text("bob", "too late to take back").unwrap();
    until("the send result", || {
        alice
            .message(late.local_id)
            .unwrap()
            .unwrap()
            .server_msg_id
            .is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let r = blocking(|| alice.recall(late.local_id));
    assert!(
        matches!(&r, Err(ClientError::Refused { code, .. }) if code == "RECALL_EXPIRED"),
        "{r:?}"
    );
    let theirs = bob
        .messages(ConversationKind::Direct, "alice", None, 10)
        .unwrap()[0]
        .local_id;
    assert!(matches!(
        blocking(|| bob.recall(theirs)),
        Err(ClientError::NotFound)
    ));
    for c in [&alice, &alice2, &bob, &carol] {
        c.shutdown();
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fresh_install_pages_back_through_server_history_without_false_beginnings() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path()).await;
    // 250 messages from carol interleaved with 50 from dave, straight into the store.
    for i in 0..300u32 {
        let from = if i % 6 == 5 { "dave" } else { "carol" };
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        s.shared
            .store
            .store_message(tern_server::store::NewMessage {
                sender: from.into(),
                client_msg_id: tern_protocol::ClientMsgId(id),
                recipient: "bob".into(),
                kind: pb::ConversationKind::Direct,
                content_type: 0,
                body: format!("{from} {i}").into_bytes().into(),
                client_ts_ms: 0,
                require_known_recipient: false,
                to_service: false,
                from_backend: false,
                device: String::new(),
                send_seq: 0,
            })
            .await
            .unwrap();
    }
    let bdir = tempfile::tempdir().unwrap();
    let (bob, bob_events) = client_with(&s, bdir.path(), "bob", "new-phone", |c| {
        c.full_history_sync = false
    });
    connected(&bob).await;
    until("the summaries", || {
        unread(&bob, ConversationKind::Direct, "carol") == 250
    })
    .await;
    until("the cursor to start at the head", || {
        bob.sync_cursor().unwrap() == 300
    })
    .await;
    assert!(
        bob.messages(ConversationKind::Direct, "carol", None, 1000)
            .unwrap()
            .len()
            < 10,
        "only the summary's last messages are local"
    );
    assert!(
        bob_events.received().len() < 20,
        "history is not announced as new messages"
    );

    let page_through = |bob: &Client| {
        let mut seen: Vec<String> = vec![];
        let mut before = None;
        loop {
            let page = bob
                .load_history(ConversationKind::Direct, "carol", before, 40)
                .unwrap();
            seen.extend(page.messages.iter().map(|m| m.text().unwrap().to_owned()));
            if page.at_beginning {
                assert!(page.messages.len() <= 40);
                break;
            }
            assert_eq!(
                page.messages.len(),
                40,
                "a full page unless at the beginning"
            );
            before = page.messages.last().map(|m| m.local_id);
        }
        seen
    };
    let seen = blocking(|| page_through(&bob));
    let expected: Vec<String> = (0..300u32)
        .rev()
        .filter(|i| i % 6 != 5)
        .map(|i| format!("carol {i}"))
        .collect();
    assert_eq!(
        seen, expected,
        "newest first, nothing missing, nothing twice"
    );
    // Every range is now held: the same pages come from the device, server or not.
    s.shutdown().await;
    assert_eq!(blocking(|| page_through(&bob)), expected);
    assert!(matches!(
        blocking(|| bob.load_history(ConversationKind::Direct, "dave", None, 40)),
        Err(ClientError::NotConnected)
    ));
    bob.shutdown();
}

/// One request the receiver got: headers, parsed JSON body, raw body.
type Request = (HashMap<String, String>, serde_json::Value, Vec<u8>);

/// A local webhook receiver: records every request; answers 500 to the first
/// `fail_first` requests, then 200.
#[derive(Default)]
struct Receiver {
    requests: Mutex<Vec<Request>>,
    fail_first: AtomicUsize,
    ok: AtomicUsize,
}

async fn receiver(fail_first: usize) -> (Arc<Receiver>, String) {
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    let rx = Arc::new(Receiver::default());
    rx.fail_first.store(fail_first, Ordering::SeqCst);
    async fn hook(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let h = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let json = serde_json::from_slice(&body).unwrap_or_default();
        rx.requests.lock().unwrap().push((h, json, body.to_vec()));
        if rx
            .fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            rx.ok.fetch_add(1, Ordering::SeqCst);
            StatusCode::OK
        }
    }
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (rx, url)
}

/// Checks `X-Tern-Signature` the way a receiver would.
fn signed(secret: &[u8], headers: &HashMap<String, String>, body: &[u8]) -> bool {
    let ts: u64 = headers["x-tern-timestamp"].parse().unwrap();
    headers["x-tern-signature"]
        == format!("v1={}", tern_server::webhook::signature(secret, ts, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn offline_recipients_get_a_signed_push_webhook_retried_until_it_succeeds() {
    let (rx, url) = receiver(1).await;
    let sdir = tempfile::tempdir().unwrap();
    let s = server_with(sdir.path(), |c| {
        c.push_webhook_url = Some(url.clone());
        c.push_webhook_delay = Duration::from_millis(300);
    })
    .await;
    let secret = s.shared.config.webhook_secret.clone();
    let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bob, _) = client(&s, bdir.path(), "bob", "bob-phone");
    connected(&bob).await;
    blocking(|| bob.register_push_token("fcm", "tok-bob")).unwrap();
    let (alice, _) = client(&s, adir.path(), "alice", "alice-phone");
    connected(&alice).await;
    // Online and acknowledging: no push.
    alice.send_text("bob", "you are here").unwrap();
    until("bob to get it", || texts(&bob, "alice").len() == 1).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        rx.requests.lock().unwrap().is_empty(),
        "a device ACKed: no push"
    );

    bob.shutdown();
    until("bob's session to end", || {
        !s.shared.registry.is_online("bob")
    })
    .await;
    alice.send_text("bob", "call me when you land").unwrap();
    until("the push to succeed after one failure", || {
        rx.ok.load(Ordering::SeqCst) == 1
    })
    .await;
    let reqs = rx.requests.lock().unwrap().clone();
    assert_eq!(reqs.len(), 2, "one failed attempt, one retry");
    let (headers, push, body) = &reqs[1];
    assert!(signed(&secret, headers, body), "signature verifies");
    assert_eq!(headers["x-tern-hook"], "push");
    assert_eq!(push["user"], "bob");
    assert_eq!(push["badge"], 2);
    assert_eq!(push["tokens"][0]["token"], "tok-bob");
    assert_eq!(push["tokens"][0]["provider"], "fcm");
    assert_eq!(push["message"]["preview"], "call me when you land");
    assert_eq!(push["message"]["conversation"], "alice");
    assert!(!signed(b"some-other-secret-key", headers, body));
    alice.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_to_a_service_account_reach_the_backend_once_across_failures_and_a_restart() {
    let (rx, url) = receiver(2).await;
    let sdir = tempfile::tempdir().unwrap();
    let tune = |c: &mut tern_server::config::Config| {
        c.service_accounts = vec!["bot".into()];
        c.service_webhook_url = Some(url.clone());
    };
    let s = server_with(sdir.path(), tune).await;
    let secret = s.shared.config.webhook_secret.clone();
    let adir = tempfile::tempdir().unwrap();
    let (alice, _) = client(&s, adir.path(), "alice", "alice-phone");
    connected(&alice).await;
    let m = alice.send_text("bot", "order #42 status?").unwrap();
    until("the send to be acknowledged", || {
        alice.message(m.local_id).unwrap().unwrap().status == MessageStatus::Sent
    })
    .await;
    until("the first failed attempt", || {
        !rx.requests.lock().unwrap().is_empty()
    })
    .await;
    // The server goes down with the delivery still owed; the outbox is durable.
    s.shutdown().await;
    alice.shutdown();
    let s = server_with(sdir.path(), tune).await;
    until("the backend to accept the delivery", || {
        rx.ok.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reqs = rx.requests.lock().unwrap().clone();
    assert_eq!(rx.ok.load(Ordering::SeqCst), 1, "delivered once");
    assert_eq!(reqs.len(), 3, "two failures, then success");
    for (headers, body, raw) in &reqs {
        assert!(signed(&secret, headers, raw));
        assert_eq!(headers["x-tern-hook"], "c2s");
        assert_eq!(body["text"], "order #42 status?");
        assert_eq!(body["sender"], "alice");
        assert_eq!(body["recipient"], "bot");
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_group_is_one_log_that_members_pull() {
    let sdir = tempfile::tempdir().unwrap();
    // Small groups are capped at 5 here; large groups are not.
    let s = server_with(sdir.path(), |c| c.max_group_members = 5).await;
    let names: Vec<String> = (0..40).map(|i| format!("l{i:02}")).collect();
    let dirs: Vec<_> = (0..44).map(|_| tempfile::tempdir().unwrap()).collect();
    let online: Vec<_> = (0..8)
        .map(|i| client(&s, dirs[i].path(), &names[i], "phone"))
        .collect();
    for (c, _) in &online {
        connected(c).await;
    }
    assert!(matches!(
        blocking(|| online[0].0.create_group("too big", &names[1..])),
        Err(ClientError::Refused { code, .. }) if code == "GROUP_FULL"
    ));
    let g = blocking(|| online[0].0.create_large_group("town hall", &names[1..])).unwrap();
    assert!(g.large);
    assert_eq!(g.members.len(), 40);
    let gid = g.id.clone();
    until("every online member to follow the group", || {
        online
            .iter()
            .all(|(c, _)| c.group_name(&gid).unwrap().as_deref() == Some("town hall"))
    })
    .await;
    for i in 0..5 {
        for (n, (c, _)) in online.iter().take(3).enumerate() {
            c.send_group_text(&gid, &format!("{n}:{i}")).unwrap();
        }
    }
    until("15 messages on every online member", || {
        online.iter().all(|(c, _)| group_texts(c, &gid).len() == 15)
    })
    .await;
    let reference = group_texts(&online[0].0, &gid);
    for (c, _) in &online {
        assert_eq!(group_texts(c, &gid), reference, "same order everywhere");
    }
    // Read diffusion: members' own timelines hold only the group's creation event.
    assert_eq!(s.shared.store.head_seq(&names[5]).await.unwrap(), 1);
    assert_eq!(s.shared.store.head_seq(&names[0]).await.unwrap(), 1);
    assert_eq!(unread(&online[5].0, ConversationKind::Group, &gid), 15);
    assert_eq!(unread(&online[1].0, ConversationKind::Group, &gid), 10);

    // A second device of l05, a fresh install without full history: the log's summary
    // (unread, last messages), then history paged from the server.
    let (tablet, _) = client_with(&s, dirs[40].path(), &names[5], "tablet", |c| {
        c.platform = Platform::Desktop;
        c.full_history_sync = false;
    });
    connected(&tablet).await;
    until("the tablet's unread count", || {
        unread(&tablet, ConversationKind::Group, &gid) == 15
    })
    .await;
    let mut seen = vec![];
    let mut before = None;
    loop {
        let page =
            blocking(|| tablet.load_history(ConversationKind::Group, &gid, before, 4)).unwrap();
        seen.extend(page.messages.iter().map(|m| m.text().unwrap().to_owned()));
        if page.at_beginning {
            break;
        }
        before = page.messages.last().map(|m| m.local_id);
    }
    seen.reverse();
    let texts: Vec<String> = reference.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(seen, texts, "the whole log, no false beginning");
    // Read on the phone: the tablet follows.
    online[5]
        .0
        .mark_read(ConversationKind::Group, &gid)
        .unwrap();
    until("the tablet to apply the phone's read mark", || {
        unread(&tablet, ConversationKind::Group, &gid) == 0
    })
    .await;

    // An offline member catches up by pulling the log.
    let (late, _) = client(&s, dirs[41].path(), &names[30], "phone");
    until("the offline member to pull the log", || {
        group_texts(&late, &gid).len() == 15
    })
    .await;
    assert_eq!(group_texts(&late, &gid), reference);
    assert_eq!(unread(&late, ConversationKind::Group, &gid), 15);

    // Recall: one log entry, applied by every member.
    let first = online[0]
        .0
        .messages(ConversationKind::Group, &gid, None, 100)
        .unwrap()
        .into_iter()
        .rev()
        .find(|m| m.outgoing)
        .unwrap();
    blocking(|| online[0].0.recall(first.local_id)).unwrap();
    until("the recall everywhere", || {
        [&online[3].0, &late].iter().all(|c| {
            c.messages(ConversationKind::Group, &gid, None, 100)
                .unwrap()
                .iter()
                .any(|m| m.recalled)
        })
    })
    .await;

    // Membership still decides: a removed member cannot send; a new member starts at
    // the join point.
    blocking(|| online[0].0.remove_group_members(&gid, &[names[7].clone()])).unwrap();
    let m = online[7].0.send_group_text(&gid, "still here?").unwrap();
    until("the removed member's send to fail", || {
        matches!(
            online[7].0.message(m.local_id).unwrap().unwrap().status,
            MessageStatus::Failed { .. }
        )
    })
    .await;
    let (newbie, _) = client(&s, dirs[42].path(), "newbie", "phone");
    connected(&newbie).await;
    blocking(|| online[1].0.add_group_members(&gid, &["newbie".to_owned()])).unwrap();
    until("the new member to follow the group", || {
        newbie.group_name(&gid).unwrap().is_some()
    })
    .await;
    online[2].0.send_group_text(&gid, "welcome").unwrap();
    until("the new member to get it", || {
        group_texts(&newbie, &gid)
            .iter()
            .any(|(_, t)| t == "welcome")
    })
    .await;
    assert_eq!(
        group_texts(&newbie, &gid).len(),
        1,
        "nothing from before the join"
    );
    until("the new member's unread count", || {
        unread(&newbie, ConversationKind::Group, &gid) == 1
    })
    .await;
    for (c, _) in &online {
        c.shutdown();
    }
    for c in [&tablet, &late, &newbie] {
        c.shutdown();
    }
    s.shutdown().await;
}
