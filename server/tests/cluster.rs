//! A cluster of three `tern-server` nodes on one PostgreSQL store and one NATS server,
//! all on loopback (`tern_testkit::cluster`): users spread over the nodes, one user's
//! devices on several nodes, kickout and presence across nodes, lost and interrupted
//! NATS traffic, and nodes killed or restarted under load. Every check compares the
//! receiver's sequence with the sender's.
//!
//! Needs `nats-server` and `TERN_TEST_PG` (skipped without them, unless CI's
//! `TERN_REQUIRE_NATS` / `TERN_REQUIRE_PG` make that a failure).

use std::sync::Arc;
use std::time::Duration;

use tern_client::{Client, ConnectionState, ConversationKind};
use tern_testkit::client::{Recorder, all_acknowledged, client_at, connected, texts};
use tern_testkit::cluster::Cluster;
use tern_testkit::server::{api, bearer};
use tern_testkit::until_within;

const BIN: &str = env!("CARGO_BIN_EXE_tern-server");

/// A client with the default (30 s) heartbeats: whatever reaches it sooner came by a
/// live push, routed between the nodes.
fn at(
    server: &str,
    pem: &[u8],
    dir: &std::path::Path,
    user: &str,
    device: &str,
) -> (Client, Arc<Recorder>) {
    client_at(server, pem, &dir.join(device), user, device, |_| {})
}

/// A client with 1–2 s heartbeats (their answers carry the timeline's head).
fn at_quick(
    server: &str,
    pem: &[u8],
    dir: &std::path::Path,
    user: &str,
    device: &str,
) -> (Client, Arc<Recorder>) {
    client_at(server, pem, &dir.join(device), user, device, |c| {
        tern_testkit::client::quick_heartbeats(c);
    })
}

/// Alice on node 0 and bob on node 1, both connected (`quick`: 1–2 s heartbeats).
async fn alice_and_bob(cluster: &Cluster, dir: &std::path::Path, quick: bool) -> (Client, Client) {
    let pem = cluster.cert_pem();
    let make = if quick { at_quick } else { at };
    let (alice, _) = make(&cluster.addrs[0].to_string(), &pem, dir, "alice", "a");
    let (bob, _) = make(&cluster.addrs[1].to_string(), &pem, dir, "bob", "b");
    connected(&alice).await;
    connected(&bob).await;
    (alice, bob)
}

/// `GET /v1/users/{user}/presence` on the node with HTTP address `http`.
async fn presence(http: std::net::SocketAddr, user: &str) -> serde_json::Value {
    api()
        .get(format!("http://{http}/v1/users/{user}/presence"))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Alice, bob and carol on nodes 0, 1 and 2, connected.
async fn trio(cluster: &Cluster, dir: &std::path::Path) -> [Client; 3] {
    let pem = cluster.cert_pem();
    let users = ["alice", "bob", "carol"];
    let clients = users.map(|u| {
        let i = users.iter().position(|x| *x == u).unwrap();
        at(
            &cluster.addrs[i].to_string(),
            &pem,
            dir,
            u,
            &format!("{u}-phone"),
        )
        .0
    });
    for c in &clients {
        connected(c).await;
    }
    clients
}

/// The texts of a group conversation as `c` shows it, oldest first.
fn group_texts(c: &Client, group: &str) -> Vec<String> {
    let mut m = c
        .messages(ConversationKind::Group, group, None, 10_000)
        .unwrap();
    m.reverse();
    m.iter()
        .filter_map(|m| m.text().map(str::to_owned))
        .collect()
}

fn numbered(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_three_nodes_exchange_direct_and_group_messages_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = Cluster::start(BIN, dir.path(), 3, &[]).await else {
        return;
    };
    let [alice, bob, carol] = trio(&cluster, dir.path()).await;
    // Direct, both ways at once, across nodes.
    let to_bob = numbered("a->b", 100);
    let to_alice = numbered("b->a", 50);
    for (i, t) in to_bob.iter().enumerate() {
        alice.send_text("bob", t).unwrap();
        if let Some(t) = to_alice.get(i) {
            bob.send_text("alice", t).unwrap();
        }
    }
    let mut both = to_bob.clone();
    both.extend(to_alice.iter().cloned());
    // Within 20 s, less than a heartbeat: only live pushes between nodes make it.
    until_within("direct messages delivered", Duration::from_secs(20), || {
        texts(&bob, "alice").len() == 150 && texts(&alice, "bob").len() == 150
    })
    .await;
    for c in [&alice, &bob] {
        let seen = texts(
            c,
            if std::ptr::eq(c, &alice) {
                "bob"
            } else {
                "alice"
            },
        );
        let from_alice: Vec<_> = seen
            .iter()
            .filter(|t| t.starts_with("a->b"))
            .cloned()
            .collect();
        let from_bob: Vec<_> = seen
            .iter()
            .filter(|t| t.starts_with("b->a"))
            .cloned()
            .collect();
        assert_eq!(from_alice, to_bob, "alice's order, once");
        assert_eq!(from_bob, to_alice, "bob's order, once");
    }
    assert_eq!(
        texts(&alice, "bob"),
        texts(&bob, "alice"),
        "one order on both sides"
    );
    // A group with a member on each node; all three send at once.
    let group = alice
        .create_group("trio", &["bob".into(), "carol".into()])
        .unwrap();
    let per = 30;
    for i in 0..per {
        for (c, who) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
            c.send_group_text(&group.id, &format!("{who} {i}")).unwrap();
        }
    }
    until_within("group messages delivered", Duration::from_secs(20), || {
        [&alice, &bob, &carol]
            .iter()
            .all(|c| group_texts(c, &group.id).len() == 3 * per)
    })
    .await;
    let reference = group_texts(&alice, &group.id);
    for c in [&bob, &carol] {
        assert_eq!(
            group_texts(c, &group.id),
            reference,
            "every member sees one order"
        );
    }
    for who in ["alice", "bob", "carol"] {
        let mine: Vec<_> = reference
            .iter()
            .filter(|t| t.starts_with(&format!("{who} ")))
            .cloned()
            .collect();
        assert_eq!(mine, numbered(who, per), "{who}'s order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_devices_on_three_nodes_see_one_timeline_and_one_unread_count() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = Cluster::start(BIN, dir.path(), 3, &["--kick-policy", "per-device"]).await
    else {
        return;
    };
    let pem = cluster.cert_pem();
    let a = |i: usize| cluster.addrs[i].to_string();
    let devices: Vec<_> = (0..3)
        .map(|i| at(&a(i), &pem, dir.path(), "alice", &format!("alice-{i}")).0)
        .collect();
    let (bob, _) = at(&a(0), &pem, dir.path(), "bob", "bob-phone");
    for c in devices.iter().chain([&bob]) {
        connected(c).await;
    }
    let from_bob = numbered("bob", 20);
    for t in &from_bob {
        bob.send_text("alice", t).unwrap();
    }
    // Alice answers from the device on node 1.
    let from_alice = numbered("alice", 10);
    for t in &from_alice {
        devices[1].send_text("bob", t).unwrap();
    }
    until_within(
        "every device has the timeline",
        Duration::from_secs(20),
        || devices.iter().all(|d| texts(d, "bob").len() == 30),
    )
    .await;
    let reference = texts(&devices[0], "bob");
    for d in &devices {
        assert_eq!(texts(d, "bob"), reference, "one timeline on every device");
    }
    let mine: Vec<_> = reference
        .iter()
        .filter(|t| t.starts_with("alice"))
        .cloned()
        .collect();
    let theirs: Vec<_> = reference
        .iter()
        .filter(|t| t.starts_with("bob"))
        .cloned()
        .collect();
    assert_eq!((mine, theirs), (from_alice, from_bob));
    until_within("one unread count", Duration::from_secs(20), || {
        devices.iter().all(|d| d.total_unread().unwrap() == 20)
    })
    .await;
    // Read on one device (node 2): the others follow.
    devices[2]
        .mark_read(ConversationKind::Direct, "bob")
        .unwrap();
    until_within("read everywhere", Duration::from_secs(20), || {
        devices.iter().all(|d| d.total_unread().unwrap() == 0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kickout_and_presence_hold_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = Cluster::start(BIN, dir.path(), 3, &[]).await else {
        return;
    };
    let pem = cluster.cert_pem();
    let a = |i: usize| cluster.addrs[i].to_string();
    // Per-platform (the default): a second Android login elsewhere ends the first.
    let (phone, _) = at(&a(0), &pem, dir.path(), "alice", "alice-phone");
    connected(&phone).await;
    let (tablet, _) = at(&a(1), &pem, dir.path(), "alice", "alice-tablet");
    connected(&tablet).await;
    let s = phone
        .wait_for_state(Duration::from_secs(10), |s| {
            matches!(s, ConnectionState::KickedOut { .. })
        })
        .await;
    assert!(
        matches!(&s, Some(ConnectionState::KickedOut { reason, .. }) if reason == "LOGIN_ELSEWHERE"),
        "the phone on node 0 was displaced by the tablet on node 1: {s:?}"
    );
    assert_eq!(tablet.connection_state(), ConnectionState::Connected);
    // A desktop on node 2 may stay beside it.
    let (desktop, _) = client_at(
        &a(2),
        &pem,
        &dir.path().join("desk"),
        "alice",
        "alice-desk",
        |c| c.platform = tern_client::Platform::Desktop,
    );
    connected(&desktop).await;
    // Presence asked on node 0, which holds none of alice's sessions.
    let http = |i: usize| cluster.node(i).http.unwrap();
    let presence = presence(http(0), "alice").await;
    assert_eq!(presence["online"], true, "{presence}");
    let mut where_: Vec<(String, String)> = presence["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["device"].as_str().unwrap().to_owned(),
                s["node"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    where_.sort();
    assert_eq!(
        where_,
        vec![
            ("alice-desk".to_owned(), "node2".to_owned()),
            ("alice-tablet".to_owned(), "node1".to_owned())
        ]
    );
    // An admin kick sent to node 0 ends the sessions on nodes 1 and 2.
    let r = api()
        .post(format!("http://{}/v1/users/alice/kick", http(0)))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    for c in [&tablet, &desktop] {
        let s = c
            .wait_for_state(Duration::from_secs(10), |s| {
                matches!(s, ConnectionState::KickedOut { .. })
            })
            .await;
        assert!(
            matches!(&s, Some(ConnectionState::KickedOut { reason, .. }) if reason == "ADMIN"),
            "{s:?}"
        );
    }
    let after = self::presence(http(1), "alice").await;
    assert_eq!(after["online"], false, "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_cluster_messages_are_caught_up_by_sync() {
    let dir = tempfile::tempdir().unwrap();
    // Every node loses half of what it publishes to NATS.
    let Some(cluster) =
        Cluster::start_env(BIN, dir.path(), 2, &[], &[("TERN_CHAOS_NATS_DROP", "0.5")]).await
    else {
        return;
    };
    let (alice, bob) = alice_and_bob(&cluster, dir.path(), true).await;
    let sent = numbered("m", 100);
    for t in &sent {
        alice.send_text("bob", t).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    until_within("all sent", Duration::from_secs(30), || {
        all_acknowledged(&alice, "bob", 1000)
    })
    .await;
    // Half the live pushes never reached bob's node: the gaps they leave are pulled
    // when a later push shows them, and the tail (nothing after it) at bob's next
    // heartbeat, whose answer carries his timeline's head.
    until_within("every message reached bob", Duration::from_secs(30), || {
        texts(&bob, "alice").len() >= sent.len()
    })
    .await;
    let got: Vec<_> = texts(&bob, "alice")
        .into_iter()
        .filter(|t| t.starts_with("m "))
        .collect();
    assert_eq!(
        got, sent,
        "every message once, in order, though half the hints were lost"
    );
}

/// Sends `texts` from `c` to `to`, `per_sec` a second, calling `at(i)` before text `i`.
async fn stream(c: &Client, to: &str, texts: &[String], per_sec: u64, mut at: impl FnMut(usize)) {
    for (i, t) in texts.iter().enumerate() {
        at(i);
        c.send_text(to, t).unwrap();
        tokio::time::sleep(Duration::from_millis(1000 / per_sec)).await;
    }
}

/// `got` is `sent` exactly: every message once, in the sender's order.
fn assert_exact(got: &[String], sent: &[String], what: &str) {
    let mut seen = std::collections::HashSet::new();
    let dups: Vec<_> = got.iter().filter(|t| !seen.insert(*t)).collect();
    assert!(dups.is_empty(), "{what}: duplicated {dups:?}");
    let missing: Vec<_> = sent.iter().filter(|t| !got.contains(t)).collect();
    assert!(missing.is_empty(), "{what}: missing {missing:?}");
    assert_eq!(got, sent, "{what}: order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarted_mid_stream_delivery_continues_and_live_pushes_resume() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cluster) = Cluster::start(BIN, dir.path(), 2, &[]).await else {
        return;
    };
    let (alice, bob) = alice_and_bob(&cluster, dir.path(), false).await;
    let sent = numbered("m", 150);
    stream(&alice, "bob", &sent, 50, |i| match i {
        50 => cluster.nats.kill(),
        100 => cluster.nats.restart(),
        _ => {}
    })
    .await;
    until_within("all acknowledged", Duration::from_secs(30), || {
        all_acknowledged(&alice, "bob", 1000)
    })
    .await;
    // What was stored while NATS was away reaches bob by sync (the pushes after the
    // restart show the gap); default heartbeats are 30 s, so this is not them.
    until_within("everything reached bob", Duration::from_secs(20), || {
        texts(&bob, "alice").len() >= sent.len()
    })
    .await;
    assert_exact(&texts(&bob, "alice"), &sent, "bob");
    // Live pushes resumed: a new message arrives well within a heartbeat.
    let t0 = std::time::Instant::now();
    alice.send_text("bob", "after").unwrap();
    until_within(
        "a live push after the restart",
        Duration::from_secs(5),
        || texts(&bob, "alice").last().map(String::as_str) == Some("after"),
    )
    .await;
    eprintln!("push after the NATS restart: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_at_20_percent_loss_its_clients_fail_over() {
    use tern_netsim::RelayConfig;
    use tern_protocol::sim::LinkConfig;
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cluster) = Cluster::start(BIN, dir.path(), 3, &[]).await else {
        return;
    };
    let pem = cluster.cert_pem();
    // A lossy path in front of every node; alice knows the three paths.
    let link = LinkConfig {
        loss: 0.20,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let mut relays = vec![];
    for addr in &cluster.addrs {
        let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), *addr);
        cfg.up = link.clone();
        cfg.down = link.clone();
        relays.push(tern_netsim::start(cfg).await.unwrap());
    }
    let via: Vec<String> = relays.iter().map(|r| r.local_addr().to_string()).collect();
    let (alice, _) = at(&via.join(","), &pem, dir.path(), "alice", "a");
    // Bob on node 1, directly.
    let (bob, _) = at(&cluster.addrs[1].to_string(), &pem, dir.path(), "bob", "b");
    connected(&alice).await;
    connected(&bob).await;
    let sent = numbered("m", 200);
    let alice = Arc::new(alice);
    let mut watcher = None;
    stream(&alice, "bob", &sent, 40, |i| {
        if i == 80 {
            // Alice's first address is node 0's path: that is her node.
            cluster.kill(0);
            // How long until the first message sent after the kill is acknowledged
            // (by another node): the fail-over time.
            let (alice, killed) = (alice.clone(), std::time::Instant::now());
            watcher = Some(tokio::spawn(async move {
                loop {
                    let acked = alice
                        .messages(ConversationKind::Direct, "bob", None, 1000)
                        .unwrap()
                        .iter()
                        .any(|m| {
                            m.text() == Some("m 80")
                                && matches!(
                                    m.status,
                                    tern_client::MessageStatus::Sent
                                        | tern_client::MessageStatus::Delivered
                                )
                        });
                    if acked || killed.elapsed() > Duration::from_secs(60) {
                        return killed.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
    })
    .await;
    until_within(
        "all acknowledged after the fail-over",
        Duration::from_secs(60),
        || all_acknowledged(&alice, "bob", 1000),
    )
    .await;
    let failover = watcher.expect("node killed").await.unwrap();
    eprintln!("fail-over: the first send after the kill was acknowledged {failover:?} later");
    // 5.6-7.4 s alone on 2 cores (path suspect after 2 s, then a fresh handshake and
    // login through a 20 % lossy path, whose lost handshake packets QUIC retries with
    // backoff); one CI run, with this file's other clusters running at the same time,
    // took 12.3 s. The bound is for a fail-over that hangs, not for the machine's load.
    assert!(
        failover < Duration::from_secs(20),
        "fail-over took {failover:?}"
    );
    until_within("everything reached bob", Duration::from_secs(30), || {
        texts(&bob, "alice").len() >= sent.len()
    })
    .await;
    assert_exact(&texts(&bob, "alice"), &sent, "bob");
    assert_exact(&texts(&alice, "bob"), &sent, "alice's own view");
    assert_eq!(alice.connection_state(), ConnectionState::Connected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_all_three_nodes_under_load_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cluster) = Cluster::start(BIN, dir.path(), 3, &[]).await else {
        return;
    };
    let pem = cluster.cert_pem();
    let all = cluster.servers();
    let reversed = {
        let mut v: Vec<_> = all.split(',').map(str::to_owned).collect();
        v.reverse();
        v.join(",")
    };
    let (alice, _) = at(&all, &pem, dir.path(), "alice", "a");
    let bob = Arc::new(at(&reversed, &pem, dir.path(), "bob", "b").0);
    connected(&alice).await;
    connected(&bob).await;
    let to_bob = numbered("a", 240);
    let to_alice = numbered("b", 120);
    let sender = {
        let to_alice = to_alice.clone();
        let bob_c = bob.clone();
        tokio::spawn(async move {
            stream(&bob_c, "alice", &to_alice, 20, |_| {}).await;
        })
    };
    let mut step = 0;
    stream(&alice, "bob", &to_bob, 40, |i| {
        // Every 1.5 s one node is stopped (SIGTERM: "going away") and started again.
        if i > 0 && i % 60 == 0 && step < 3 {
            cluster.stop(step);
            cluster.restart(step);
            step += 1;
        }
    })
    .await;
    sender.await.unwrap();
    until_within("all acknowledged", Duration::from_secs(60), || {
        all_acknowledged(&alice, "bob", 1000) && all_acknowledged(&bob, "alice", 1000)
    })
    .await;
    until_within("everything delivered", Duration::from_secs(30), || {
        texts(&bob, "alice").len() >= to_bob.len() + to_alice.len()
            && texts(&alice, "bob").len() >= to_bob.len() + to_alice.len()
    })
    .await;
    for (c, who) in [(&alice, "alice"), (&*bob, "bob")] {
        let other = if who == "alice" { "bob" } else { "alice" };
        let seen = texts(c, other);
        let a: Vec<_> = seen
            .iter()
            .filter(|t| t.starts_with("a "))
            .cloned()
            .collect();
        let b: Vec<_> = seen
            .iter()
            .filter(|t| t.starts_with("b "))
            .cloned()
            .collect();
        assert_exact(&a, &to_bob, who);
        assert_exact(&b, &to_alice, who);
    }
    assert_eq!(step, 3, "all three nodes were restarted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_group_across_nodes_gets_its_log_live_and_a_member_added_later_too() {
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = Cluster::start(BIN, dir.path(), 3, &[]).await else {
        return;
    };
    let [alice, bob, carol] = trio(&cluster, dir.path()).await;
    let (dave, _) = at(
        &cluster.addrs[1].to_string(),
        &cluster.cert_pem(),
        dir.path(),
        "dave",
        "dave-phone",
    );
    connected(&dave).await;
    let group = alice
        .create_large_group("town", &["bob".into(), "carol".into()])
        .unwrap();
    let first = numbered("first", 20);
    for t in &first {
        alice.send_group_text(&group.id, t).unwrap();
    }
    // Live, within 20 s (less than a heartbeat): through the group's subject.
    until_within(
        "the log reached bob and carol",
        Duration::from_secs(20),
        || group_texts(&bob, &group.id).len() == 20 && group_texts(&carol, &group.id).len() == 20,
    )
    .await;
    assert_eq!(group_texts(&bob, &group.id), first);
    assert_eq!(group_texts(&carol, &group.id), first);
    // Dave (online on node 1) joins; the next messages reach him live too.
    alice
        .add_group_members(&group.id, &["dave".into()])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = numbered("second", 10);
    for t in &second {
        carol.send_group_text(&group.id, t).unwrap();
    }
    until_within("dave has the new messages", Duration::from_secs(20), || {
        group_texts(&dave, &group.id)
            .iter()
            .filter(|t| t.starts_with("second"))
            .count()
            == 10
    })
    .await;
    let got: Vec<_> = group_texts(&dave, &group.id)
        .into_iter()
        .filter(|t| t.starts_with("second"))
        .collect();
    assert_eq!(got, second);
    for c in [&alice, &bob] {
        until_within("everyone has both rounds", Duration::from_secs(20), || {
            group_texts(c, &group.id).len() == 30
        })
        .await;
        let mut want = first.clone();
        want.extend(second.iter().cloned());
        assert_eq!(group_texts(c, &group.id), want);
    }
}

/// Quiet keepalives in a cluster (issue 17): the node answers one only when the user's
/// head moved past what the device was told and acknowledged, which is how a push lost
/// between nodes is still found at the next heartbeat; otherwise it stays silent like a
/// single server. Every hint between the nodes is dropped here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_keepalive_is_answered_in_a_cluster_only_when_a_push_was_lost() {
    use tern_protocol::frame::Frame;
    use tern_protocol::pb;
    use tern_testkit::raw::{TestClient, chat_frame};
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) =
        Cluster::start_env(BIN, dir.path(), 2, &[], &[("TERN_CHAOS_NATS_DROP", "1.0")]).await
    else {
        return;
    };
    let node = |i: usize| (cluster.node(i).addr, cluster.node(i).cert.clone());
    let (mut alice, _) =
        TestClient::login(node(0).0, node(0).1, "alice", "a", pb::Platform::Android).await;
    let (mut bob, _) =
        TestClient::login(node(1).0, node(1).1, "bob", "b", pb::Platform::Android).await;
    let quiet = || {
        Frame::Heartbeat(pb::Heartbeat {
            interval_ms: 100_000,
            quiet: true,
        })
    };
    bob.send(quiet()).await;
    assert_eq!(
        bob.recv_within(Duration::from_millis(500)).await,
        Err(()),
        "nothing missed: silent"
    );
    let id = tern_protocol::ClientMsgId::generate(1, &mut rand::rng());
    alice
        .send(chat_frame(id, "bob", "lost between nodes"))
        .await;
    assert_eq!(alice.send_result().await.code, 0);
    // The hint to bob's node was dropped: no push. His next quiet keepalive is answered
    // with the head that shows the message.
    bob.send(quiet()).await;
    match bob.recv_within(Duration::from_secs(5)).await {
        Ok(Some(Frame::HeartbeatReply(r))) => assert_eq!(r.inbox_head_seq, 1),
        other => panic!("expected a reply with the head, got {other:?}"),
    }
    bob.send(quiet()).await;
    assert_eq!(
        bob.recv_within(Duration::from_millis(500)).await,
        Err(()),
        "told once: silent again"
    );
}
