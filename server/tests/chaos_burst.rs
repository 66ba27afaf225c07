//! Chaos: bursts of sends through everything that used to reorder them — 30 % loss with
//! reordering and duplication, a store that stops taking writes mid-burst, a server
//! `kill -9` in the middle of a pipelined burst, and three members bursting into one
//! group at once. Each test compares the receivers' sequences with the senders' order
//! (not counts), and checks that every sender's statuses end at Sent/Delivered with
//! nothing reported failed. The server is the real binary; the clients are
//! `tern-client`s with the default uplink (sends in datagrams).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::spawn_server;
use tern_client::{Client, ConversationKind, MessageStatus};
use tern_netsim::{RelayConfig, RelayHandle};
use tern_protocol::sim::LinkConfig;
use tern_testkit::client::{Recorder, client_at, connected};
use tern_testkit::until_within;

async fn relay(upstream: std::net::SocketAddr, link: LinkConfig, seed: u64) -> RelayHandle {
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), upstream);
    cfg.up = link.clone();
    cfg.down = link;
    cfg.seed = seed;
    tern_netsim::start(cfg).await.unwrap()
}

fn lossy() -> LinkConfig {
    LinkConfig {
        loss: 0.3,
        delay: Duration::from_millis(25),
        jitter: Duration::from_millis(10),
        reorder: 0.1,
        reorder_delay: Duration::from_millis(40),
        duplicate: 0.02,
        ..LinkConfig::default()
    }
}

fn user(
    via: std::net::SocketAddr,
    pem: &[u8],
    dir: &std::path::Path,
    name: &str,
) -> (Client, Arc<Recorder>) {
    client_at(
        &via.to_string(),
        pem,
        &dir.join(name),
        name,
        &format!("{name}-phone"),
        |_| {},
    )
}

fn texts(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i}")).collect()
}

async fn all_settled(c: &Client, kind: ConversationKind, with: &str, n: usize) {
    until_within(
        "the sender's messages all settled",
        Duration::from_secs(60),
        || {
            let m = c.messages(kind, with, None, n as u32 + 50).unwrap();
            m.iter()
                .filter(|m| m.outgoing)
                .all(|m| matches!(m.status, MessageStatus::Sent | MessageStatus::Delivered))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_through_30_percent_loss_with_reordering_keeps_the_senders_order() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(&dir.path().join("server"), "127.0.0.1:0");
    let r = relay(server.addr, lossy(), 5).await;
    let (alice, alice_seen) = user(r.local_addr(), &server.cert_pem, dir.path(), "alice");
    let (bob, bob_seen) = user(r.local_addr(), &server.cert_pem, dir.path(), "bob");
    connected(&alice).await;
    connected(&bob).await;
    let want = texts("m", N);
    for t in &want {
        alice.send_text("bob", t).unwrap();
    }
    until_within("bob to have the burst", Duration::from_secs(120), || {
        bob_seen.texts().len() >= N
    })
    .await;
    all_settled(&alice, ConversationKind::Direct, "bob", N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob_seen.texts(), want, "announced once, in alice's order");
    assert_eq!(
        tern_testkit::client::texts(&bob, "alice"),
        want,
        "shown in order"
    );
    assert_eq!(alice_seen.failures(), 0);
    println!("{N} through 30 % loss + reordering: {}", r.stats());
    alice.shutdown();
    bob.shutdown();
    let _ = server.child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_while_the_store_is_locked_keeps_the_senders_order() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut server = spawn_server(&data, "127.0.0.1:0");
    let (alice, alice_seen) = user(server.addr, &server.cert_pem, dir.path(), "alice");
    let (bob, bob_seen) = user(server.addr, &server.cert_pem, dir.path(), "bob");
    connected(&alice).await;
    connected(&bob).await;
    let want = texts("m", N);
    for t in &want[..100] {
        alice.send_text("bob", t).unwrap();
    }
    until_within("bob to have the first 50", Duration::from_secs(20), || {
        bob_seen.texts().len() >= 50
    })
    .await;
    // Another process takes SQLite's write lock: the server's writer stalls, and its
    // commits fail after its busy timeout, while alice keeps sending.
    let db = rusqlite::Connection::open(data.join("tern.db")).unwrap();
    db.execute_batch("BEGIN IMMEDIATE").unwrap();
    for t in &want[100..] {
        alice.send_text("bob", t).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    db.execute_batch("ROLLBACK").unwrap();
    drop(db);
    until_within("bob to have everything", Duration::from_secs(90), || {
        bob_seen.texts().len() >= N
    })
    .await;
    all_settled(&alice, ConversationKind::Direct, "bob", N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob_seen.texts(), want, "announced once, in alice's order");
    assert_eq!(tern_testkit::client::texts(&bob, "alice"), want);
    assert_eq!(alice_seen.failures(), 0);
    alice.shutdown();
    bob.shutdown();
    let _ = server.child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_burst_survives_a_kill_9_in_its_middle() {
    const N: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut server = common::spawn_quic_only(&data, "127.0.0.1:0");
    let addr = server.addr;
    let (alice, alice_seen) = user(addr, &server.cert_pem, dir.path(), "alice");
    let (bob, bob_seen) = user(addr, &server.cert_pem, dir.path(), "bob");
    connected(&alice).await;
    connected(&bob).await;
    let want = texts("m", N);
    for t in &want {
        alice.send_text("bob", t).unwrap();
    }
    until_within(
        "bob to have part of the burst",
        Duration::from_secs(20),
        || bob_seen.texts().len() >= 60,
    )
    .await;
    server.child.kill().expect("SIGKILL");
    server.child.wait().unwrap();
    let seen_at_kill = bob_seen.texts().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server = common::spawn_quic_only(&data, &addr.to_string());
    until_within("bob to have everything", Duration::from_secs(60), || {
        bob_seen.texts().len() >= N
    })
    .await;
    all_settled(&alice, ConversationKind::Direct, "bob", N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        seen_at_kill < N,
        "the kill came mid-burst ({seen_at_kill} seen)"
    );
    assert_eq!(bob_seen.texts(), want, "announced once, in alice's order");
    assert_eq!(tern_testkit::client::texts(&bob, "alice"), want);
    assert_eq!(alice_seen.failures(), 0);
    assert_eq!(
        alice
            .messages(ConversationKind::Direct, "bob", None, N as u32 + 10)
            .unwrap()
            .len(),
        N,
        "no duplicate on the sender's side"
    );
    alice.shutdown();
    bob.shutdown();
    let _ = server.child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_bursting_into_a_group_see_one_order_that_keeps_each_senders() {
    const N: usize = 80;
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(&dir.path().join("server"), "127.0.0.1:0");
    let r = relay(server.addr, lossy(), 9).await;
    let names = ["ann", "ben", "cat"];
    let members: Vec<(Client, Arc<Recorder>)> = names
        .iter()
        .map(|n| user(r.local_addr(), &server.cert_pem, dir.path(), n))
        .collect();
    for (c, _) in &members {
        connected(c).await;
    }
    let group = {
        let owner = &members[0].0;
        let others: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut created = None;
        for _ in 0..10 {
            match owner.create_group("team", &others) {
                Ok(g) => {
                    created = Some(g);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        created.expect("group created").id
    };
    // All three burst at once.
    for i in 0..N {
        for (n, (c, _)) in names.iter().zip(&members) {
            c.send_group_text(&group, &format!("{n} {i}")).unwrap();
        }
    }
    let total = N * names.len();
    for (c, _) in &members {
        until_within(
            "every member to hold every message",
            Duration::from_secs(120),
            || {
                c.messages(ConversationKind::Group, &group, None, total as u32 + 50)
                    .unwrap()
                    .len()
                    >= total
            },
        )
        .await;
        all_settled(c, ConversationKind::Group, &group, total).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let views: Vec<Vec<String>> = members
        .iter()
        .map(|(c, _)| {
            let mut m = c
                .messages(ConversationKind::Group, &group, None, total as u32 + 50)
                .unwrap();
            m.reverse();
            m.iter().map(|m| m.text().unwrap().to_owned()).collect()
        })
        .collect();
    for v in &views {
        assert_eq!(v.len(), total, "each message once");
        for n in names {
            let own: Vec<&String> = v.iter().filter(|t| t.starts_with(n)).collect();
            let want = texts(n, N);
            assert_eq!(own, want.iter().collect::<Vec<_>>(), "{n}'s order kept");
        }
    }
    assert_eq!(views[0], views[1], "ann and ben see one order");
    assert_eq!(views[1], views[2], "ben and cat see one order");
    for (_, seen) in &members {
        assert_eq!(seen.failures(), 0);
    }
    for (c, _) in &members {
        c.shutdown();
    }
    let _ = server.child.kill();
}

/// Sends paced at 10 a second through 30 % loss: the path is measured lossy and the
/// window has room, so alice's sends go twice and the server repeats its results
/// (`tern_protocol::redundancy`); bob still gets each once, in alice's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_sends_through_30_percent_loss_go_twice_and_keep_their_order() {
    const N: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(&dir.path().join("server"), "127.0.0.1:0");
    let r = relay(server.addr, lossy(), 11).await;
    let (alice, alice_seen) = user(r.local_addr(), &server.cert_pem, dir.path(), "alice");
    let (bob, bob_seen) = user(r.local_addr(), &server.cert_pem, dir.path(), "bob");
    connected(&alice).await;
    connected(&bob).await;
    let want = texts("p", N);
    let mut copied = false;
    for t in &want {
        alice.send_text("bob", t).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        copied |= alice.diagnostics().sends_copied;
    }
    until_within("bob to have every message", Duration::from_secs(60), || {
        bob_seen.texts().len() >= N
    })
    .await;
    all_settled(&alice, ConversationKind::Direct, "bob", N).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob_seen.texts(), want, "once, in alice's order");
    assert_eq!(alice_seen.failures(), 0);
    assert!(copied, "alice measured the path lossy and copied her sends");
    let metrics = server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tern_send_results_repeated_total") && !l.ends_with(" 0")),
        "the server repeated send results on the lossy path"
    );
    println!("{N} paced through 30 % loss with copies: {}", r.stats());
    alice.shutdown();
    bob.shutdown();
    let _ = server.child.kill();
}
