//! The client core against a real tern-server on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tern_client::{Client, ClientConfig, ConnectionState, ConversationKind, MessageStatus};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_arrive_once_and_in_order_across_an_offline_period() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path()).await;
    let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bob, bob_events) = client(&s, bdir.path(), "bob", "bob-phone");
    let (alice, alice_events) = client(&s, adir.path(), "alice", "alice-phone");
    connected(&bob).await;
    connected(&alice).await;

    for i in 1..=400 {
        alice.send_text("bob", &format!("m{i}")).unwrap();
    }
    until("bob to receive some live", || {
        bob_events.received().len() >= 100
    })
    .await;
    bob.shutdown(); // bob goes offline mid-stream
    let live = bob_events.received().len();
    for i in 401..=1000 {
        alice.send_text("bob", &format!("m{i}")).unwrap();
    }
    until("alice's outbox to drain", || {
        alice
            .messages(ConversationKind::Direct, "bob", None, 2000)
            .unwrap()
            .iter()
            .all(|m| m.status != MessageStatus::Pending)
    })
    .await;

    let (bob, bob_events2) = client(&s, bdir.path(), "bob", "bob-phone");
    connected(&bob).await;
    until("bob's catch-up", || bob.sync_cursor().unwrap_or(0) >= 1000).await;
    // The events reach the app after the pages' commits, from the dispatcher thread: on a
    // loaded machine they trail the cursor (CI once checked with 521 of them still on
    // their way). Wait for them, then for any duplicate behind them.
    until("bob's events", || {
        live + bob_events2.received().len() >= 1000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected: Vec<String> = (1..=1000).map(|i| format!("m{i}")).collect();
    assert_eq!(
        texts(&bob, "alice"),
        expected,
        "every message once, in order"
    );
    let mut seen: Vec<String> = bob_events.received()[..live]
        .iter()
        .map(|m| m.text().unwrap().to_owned())
        .collect();
    seen.extend(
        bob_events2
            .received()
            .iter()
            .map(|m| m.text().unwrap().to_owned()),
    );
    assert_eq!(seen, expected, "the app's events came in order too");
    let total_events = live + bob_events2.received().len();
    assert_eq!(
        total_events, 1000,
        "the app saw each message exactly once ({live} live before going offline)"
    );
    let conv = &bob.conversations().unwrap()[0];
    assert_eq!((conv.id.as_str(), conv.unread), ("alice", 1000));
    // The app is told the conversation's final state (during a catch-up its updates are
    // paced, and the last one goes out when the catch-up ends).
    let last_update = || {
        bob_events2
            .events
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find_map(|e| match e {
                tern_client::ClientEvent::ConversationUpdated(c) if c.id == "alice" => {
                    Some(c.unread)
                }
                _ => None,
            })
    };
    until("the conversation's last update", || {
        last_update() == Some(1000)
    })
    .await;
    // Alice's statuses: all sent; the ones bob stored are delivered.
    until("delivered receipts", || {
        alice
            .messages(ConversationKind::Direct, "bob", None, 2000)
            .unwrap()
            .iter()
            .all(|m| m.status == MessageStatus::Delivered)
    })
    .await;
    assert!(alice_events.states().contains(&ConnectionState::Connected));
    alice.shutdown();
    bob.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_resends_after_a_kill_and_restart_without_duplicates() {
    let sdir = tempfile::tempdir().unwrap();
    // A send budget of 50 at once, then 200 a second: the kill below always leaves
    // most of the 200 in the outbox (with the test kit's unlimited budget, a fast run
    // could send and settle all of them before the kill).
    let s = server_with(sdir.path(), |c| {
        c.rate_per_sec = 200;
        c.rate_burst = 50;
    })
    .await;
    let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _) = client(&s, adir.path(), "alice", "alice-phone");
    connected(&alice).await;
    for i in 1..=200 {
        alice.send_text("bob", &format!("m{i}")).unwrap();
    }
    // "Kill" the app right away: some messages reached the server, some did not, and
    // most results never came back.
    alice.shutdown();
    drop(alice);
    let pending_after_kill = tern_client::store::Db::open(adir.path(), "alice")
        .unwrap()
        .outbox(1000)
        .unwrap()
        .len();
    assert!(
        pending_after_kill > 0,
        "the kill left messages in the outbox"
    );

    let (alice, _) = client(&s, adir.path(), "alice", "alice-phone");
    connected(&alice).await;
    until("the outbox to drain after restart", || {
        alice
            .messages(ConversationKind::Direct, "bob", None, 1000)
            .unwrap()
            .iter()
            .all(|m| m.status != MessageStatus::Pending)
    })
    .await;

    let (bob, bob_events) = client(&s, bdir.path(), "bob", "bob-phone");
    connected(&bob).await;
    until("bob's sync", || bob.sync_cursor().unwrap_or(0) >= 200).await;
    // The events trail the commits (see the test above); then any duplicate behind them.
    until("bob's events", || bob_events.received().len() >= 200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let expected: Vec<String> = (1..=200).map(|i| format!("m{i}")).collect();
    assert_eq!(texts(&bob, "alice"), expected);
    assert_eq!(
        bob_events.received().len(),
        200,
        "no duplicate reached the app"
    );
    println!("{pending_after_kill} of 200 were still in the outbox after the kill");
    alice.shutdown();
    bob.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_gap_is_detected_and_filled() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path()).await;
    let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (bob, bob_events) = client(&s, bdir.path(), "bob", "bob-phone");
    let (alice, _) = client(&s, adir.path(), "alice", "alice-phone");
    connected(&bob).await;
    connected(&alice).await;
    // An entry lands in bob's timeline but its push is lost (stored, never routed).
    let stored = s
        .shared
        .store
        .store_message(tern_server::store::NewMessage {
            sender: "carol".into(),
            client_msg_id: tern_protocol::ClientMsgId([7; 16]),
            recipient: "bob".into(),
            kind: tern_protocol::pb::ConversationKind::Direct,
            content_type: 0,
            body: bytes::Bytes::from_static(b"the lost push"),
            client_ts_ms: 0,
            require_known_recipient: false,
            to_service: false,
            from_backend: false,
            device: String::new(),
            send_seq: 0,
        })
        .await
        .unwrap();
    assert_eq!(stored.fanout[1].entry.seq, 1);
    alice.send_text("bob", "after the gap").unwrap();
    until("bob to fill the gap", || bob_events.received().len() == 2).await;
    assert_eq!(bob.sync_cursor().unwrap(), 2);
    assert_eq!(texts(&bob, "carol"), vec!["the lost push"]);
    assert_eq!(texts(&bob, "alice"), vec!["after the gap"]);
    bob.shutdown();
    alice.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kickout_stops_the_old_client() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path()).await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (old, old_events) = client(&s, d1.path(), "bob", "phone-1");
    connected(&old).await;
    let (new, _) = client(&s, d2.path(), "bob", "phone-2");
    connected(&new).await;
    let kicked = old
        .wait_for_state(WAIT, |s| matches!(s, ConnectionState::KickedOut { .. }))
        .await;
    match kicked {
        Some(ConnectionState::KickedOut { reason, text }) => {
            assert_eq!(reason, "LOGIN_ELSEWHERE");
            assert!(text.contains("phone-2"));
        }
        other => panic!("{other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        matches!(old.connection_state(), ConnectionState::KickedOut { .. }),
        "no reconnect after a kickout"
    );
    let states = old_events.states();
    assert_eq!(
        states
            .iter()
            .filter(|s| **s == ConnectionState::Connecting)
            .count(),
        1,
        "{states:?}"
    );
    let devices: Vec<String> = s
        .shared
        .registry
        .sessions_of("bob")
        .into_iter()
        .map(|s| s.device)
        .collect();
    assert_eq!(devices, vec!["phone-2"]);
    old.shutdown();
    new.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_reported_and_not_retried() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ClientConfig::new(s.quic_addr.to_string(), dir.path(), "d");
    config.ca_pem = Some(std::fs::read(&s.cert_path).unwrap());
    let c = Client::new(config).unwrap();
    c.login("bob", "forged").unwrap();
    let st = c
        .wait_for_state(WAIT, |s| matches!(s, ConnectionState::LoginFailed { .. }))
        .await;
    assert!(
        matches!(st, Some(ConnectionState::LoginFailed { ref code, .. }) if code == "BAD_TOKEN"),
        "{st:?}"
    );
    c.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_server_restart_and_network_change_keeps_working() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path()).await;
    let addr = s.quic_addr;
    let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _) = client(&s, adir.path(), "alice", "a");
    let (bob, bob_events) = client(&s, bdir.path(), "bob", "b");
    connected(&alice).await;
    connected(&bob).await;
    bob.network_changed("cellular");
    alice.send_text("bob", "after migration").unwrap();
    until("delivery after a socket migration", || {
        bob_events.received().len() == 1
    })
    .await;

    s.shutdown().await;
    // quinn releases the UDP socket just after shutdown returns; retry the bind briefly.
    let s = loop {
        let mut config = tern_testkit::server::dev_config(sdir.path());
        config.quic = addr;
        match tern_server::server::start(config).await {
            Ok(s) => break s,
            Err(e) if format!("{e:#}").contains("in use") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:#}"),
        }
    };
    alice.send_text("bob", "after restart").unwrap();
    until("delivery after the server restart", || {
        bob_events.received().len() == 2
    })
    .await;
    assert!(
        bob_events
            .states()
            .iter()
            .any(|s| matches!(s, ConnectionState::WaitingToReconnect { .. }))
    );
    alice.shutdown();
    bob.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_sends_are_retried_not_failed() {
    let sdir = tempfile::tempdir().unwrap();
    let mut config = tern_testkit::server::dev_config(sdir.path());
    config.rate_per_sec = 30;
    config.rate_burst = 10;
    let s = tern_server::server::start(config).await.unwrap();
    let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, alice_events) = client(&s, adir.path(), "alice", "a");
    let (bob, bob_events) = client(&s, bdir.path(), "bob", "b");
    connected(&alice).await;
    connected(&bob).await;
    for i in 1..=40 {
        alice.send_text("bob", &format!("r{i}")).unwrap();
    }
    until("every message stored despite the rate limit", || {
        alice
            .messages(ConversationKind::Direct, "bob", None, 100)
            .unwrap()
            .iter()
            .all(|m| m.status != MessageStatus::Pending)
    })
    .await;
    let failed = alice_events.failures();
    assert_eq!(
        failed, 0,
        "a rate limit defers sends, it does not fail them"
    );
    until("bob to get them all", || bob_events.received().len() == 40).await;
    alice.shutdown();
    bob.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_promptly_with_no_task_left() {
    let sdir = tempfile::tempdir().unwrap();
    let s = server(sdir.path()).await;
    let dir = tempfile::tempdir().unwrap();
    let (c, events) = client(&s, dir.path(), "bob", "d");
    connected(&c).await;
    let t = Instant::now();
    c.shutdown();
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?}");
    assert_eq!(c.tasks_left_at_shutdown(), 0, "every task ended on its own");
    let seen = events.events.lock().unwrap().len();
    // Nothing reaches the listener after shutdown returned.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events.events.lock().unwrap().len(), seen);
    assert!(matches!(
        c.send_text("alice", "x"),
        Err(tern_client::ClientError::NotLoggedIn)
    ));
    c.shutdown(); // idempotent
    s.shutdown().await;
}
