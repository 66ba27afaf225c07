//! Chaos: a 20 s outage on alice's path while she has a message to send, in the two
//! forms real networks produce. *Silent*: every packet vanishes (a tunnel, a dead cell).
//! *Refused*: the path answers with ICMP port-unreachable (the relay in front of the
//! server restarted: nothing listens on its port until it is back). In both, QUIC's own
//! probes have backed off to many seconds by the time the path returns; the client
//! notices the path is suspect (a send unanswered, nothing heard) and races fresh
//! connections every 500 ms, so the message written during the outage must reach bob
//! within a second of the path coming back — once, in order, with alice's statuses
//! ending at Sent/Delivered.

mod common;

use std::time::{Duration, Instant};

use common::spawn_server;
use tern_netsim::RelayConfig;
use tern_protocol::sim::LinkConfig;
use tern_testkit::client::{client_at, connected};
use tern_testkit::until_within;

const OUTAGE: Duration = Duration::from_secs(20);
/// When the outage starts, after the relay started.
const OUTAGE_AT: Duration = Duration::from_secs(4);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outage {
    /// Packets vanish.
    Silent,
    /// The relay is gone: the client's packets draw ICMP port-unreachable.
    Refused,
}

fn relay_config(listen: &str, upstream: std::net::SocketAddr, silent: bool) -> RelayConfig {
    let link = LinkConfig {
        loss: 0.0,
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(2),
        blackouts: if silent {
            vec![(OUTAGE_AT, OUTAGE)]
        } else {
            vec![]
        },
        ..LinkConfig::default()
    };
    let mut cfg = RelayConfig::new(listen.parse().unwrap(), upstream);
    cfg.up = link.clone();
    cfg.down = link;
    cfg
}

/// Runs one outage; returns the time from the path's return to bob showing the
/// message alice wrote during it.
async fn outage(kind: Outage) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(&dir.path().join("server"), "127.0.0.1:0");
    let relay = tern_netsim::start(relay_config(
        "127.0.0.1:0",
        server.addr,
        kind == Outage::Silent,
    ))
    .await
    .unwrap();
    let relay_started = Instant::now();
    let via = relay.local_addr();
    let (alice, alice_seen) = client_at(
        &via.to_string(),
        &server.cert_pem,
        &dir.path().join("a"),
        "alice",
        "alice-phone",
        |_| {},
    );
    let (bob, bob_seen) = client_at(
        &server.addr.to_string(),
        &server.cert_pem,
        &dir.path().join("b"),
        "bob",
        "bob-phone",
        |_| {},
    );
    connected(&alice).await;
    connected(&bob).await;
    alice.send_text("bob", "before").unwrap();
    until_within("bob to see 'before'", Duration::from_secs(5), || {
        bob_seen.texts().len() == 1
    })
    .await;

    tokio::time::sleep_until((relay_started + OUTAGE_AT).into()).await;
    let mut relay = Some(relay);
    if kind == Outage::Refused {
        relay.take().unwrap().stop();
    }
    // Well into the outage: QUIC has backed off, alice writes a message.
    tokio::time::sleep(Duration::from_secs(8)).await;
    alice.send_text("bob", "during").unwrap();
    let back_at = relay_started + OUTAGE_AT + OUTAGE;
    tokio::time::sleep_until(back_at.into()).await;
    if kind == Outage::Refused {
        // The relay comes back on the same port (new upstream sockets: the server sees
        // alice from a new address).
        relay = Some(
            tern_netsim::start(relay_config(&via.to_string(), server.addr, false))
                .await
                .expect("the relay's port is free again"),
        );
    }
    let back = Instant::now();
    let mut shown = None;
    while back.elapsed() < Duration::from_secs(15) {
        if bob_seen.texts().len() >= 2 {
            shown = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resumed = shown.unwrap_or_else(|| panic!("{kind:?}: 'during' never reached bob"));
    alice.send_text("bob", "after").unwrap();
    until_within("bob to see 'after'", Duration::from_secs(5), || {
        bob_seen.texts().len() >= 3
    })
    .await;
    until_within(
        "alice's messages acknowledged",
        Duration::from_secs(10),
        || tern_testkit::client::all_acknowledged(&alice, "bob", 10),
    )
    .await;
    assert_eq!(
        bob_seen.texts(),
        ["before", "during", "after"],
        "once, in order"
    );
    assert_eq!(alice_seen.failures(), 0);
    println!("{kind:?} outage of {OUTAGE:?}: 'during' shown {resumed:?} after the path came back");
    drop(relay);
    alice.shutdown();
    bob.shutdown();
    let _ = server.child.kill();
    resumed
}

// The target is 1 s (docs/bench/chaos.md records the measured times); the assertion
// leaves room for a loaded 2-core CI machine.
const LIMIT: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_outage_resumes_within_a_second_of_the_path_returning() {
    let t = outage(Outage::Silent).await;
    assert!(t < LIMIT, "resumed {t:?} after the path came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_icmp_refused_outage_resumes_within_a_second_of_the_path_returning() {
    let t = outage(Outage::Refused).await;
    assert!(t < LIMIT, "resumed {t:?} after the path came back");
}
