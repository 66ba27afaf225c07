//! Chaos: `kill -9` of the server while a `tern-client` is sending through a lossy
//! `tern-netsim` path, then a restart on the same address and data. The whole stack
//! must come back by itself: the sender's outbox resends what was not acknowledged,
//! the server's idempotency drops what it had already stored, the receiver catches
//! up — every message shown exactly once, in order, none reported failed, within
//! seconds of the restart.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_client::{Client, ConnectionState, ConversationKind};
use tern_netsim::RelayConfig;
use tern_protocol::sim::LinkConfig;
use tern_testkit::client::{Recorder, client_at};
use tern_testkit::until_within;

fn client(
    via: std::net::SocketAddr,
    pem: &[u8],
    dir: &std::path::Path,
    user: &str,
) -> (Client, Arc<Recorder>) {
    client_at(
        &via.to_string(),
        pem,
        dir,
        user,
        &format!("{user}-phone"),
        |_| {},
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_mid_send_loses_and_duplicates_nothing() {
    const TOTAL: usize = 200;
    const KILL_AT: usize = 80;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let mut server = common::spawn_quic_only(&data, "127.0.0.1:0");
    let addr = server.addr;
    let link = LinkConfig {
        loss: 0.05,
        delay: std::time::Duration::from_millis(20),
        jitter: std::time::Duration::from_millis(10),
        ..LinkConfig::default()
    };
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), addr);
    cfg.up = link.clone();
    cfg.down = link;
    let relay = tern_netsim::start(cfg).await.unwrap();
    let (alice, alice_seen) = client(
        relay.local_addr(),
        &server.cert_pem,
        &dir.path().join("a"),
        "alice",
    );
    let (bob, bob_seen) = client(
        relay.local_addr(),
        &server.cert_pem,
        &dir.path().join("b"),
        "bob",
    );
    for c in [&alice, &bob] {
        let s = c
            .wait_for_state(Duration::from_secs(20), |s| {
                *s == ConnectionState::Connected
            })
            .await;
        assert_eq!(s, Some(ConnectionState::Connected));
    }

    let mut restarted_at = None;
    for i in 0..TOTAL {
        alice.send_text("bob", &format!("k{i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(15)).await;
        if i == KILL_AT {
            server.child.kill().expect("SIGKILL");
            server.child.wait().unwrap();
            // Down for a moment while alice keeps sending into her outbox.
        }
        if i == KILL_AT + 40 {
            server = common::spawn_quic_only(&data, &addr.to_string());
            assert_eq!(server.addr, addr, "restarted on the same address");
            restarted_at = Some(Instant::now());
        }
    }
    assert!(restarted_at.is_some());
    // The restarted server answers the clients' next packets with valid stateless
    // resets (persisted keys), so both reconnect at once instead of after their
    // heartbeat timeouts (~55 s before the keys were persisted).
    until_within("bob to have everything", Duration::from_secs(20), || {
        bob_seen.texts().len() >= TOTAL
    })
    .await;
    until_within(
        "alice's messages all acknowledged",
        Duration::from_secs(60),
        || tern_testkit::client::all_acknowledged(&alice, "bob", TOTAL as u32 + 10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected: Vec<String> = (0..TOTAL).map(|i| format!("k{i}")).collect();
    assert_eq!(bob_seen.texts(), expected, "exactly once, in order");
    assert_eq!(
        alice
            .messages(ConversationKind::Direct, "bob", None, TOTAL as u32 + 10)
            .unwrap()
            .len(),
        TOTAL,
        "no duplicate on the sender's side"
    );
    assert_eq!(alice_seen.failures(), 0, "none reported failed");
    println!(
        "kill -9 after message {KILL_AT}, restart after {}: all {TOTAL} once, in order, {:.1?} after the restart\n{}",
        KILL_AT + 40,
        restarted_at.unwrap().elapsed(),
        relay.stats()
    );
    alice.shutdown();
    bob.shutdown();
    let _ = server.child.kill();
}
