//! The sender's order through the real stack on the server's default send budget
//! (50 frames/s, burst 200): an outbox of 1,000 written offline flushes paced to the
//! budget the server announced, without a single RATE_LIMITED, and the receiver shows
//! exactly the sender's order. (Its own test binary: the server's metrics recorder is
//! per process, and the test reads `tern_rate_limited_total` from it.)

mod common;

use std::time::Duration;

use common::*;
use tern_client::{ConversationKind, MessageStatus};

fn rate_limited(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("tern_rate_limited_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_of_1000_flushes_in_order_without_a_rate_limit_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let server = server_with(&dir.path().join("server"), |c| {
        c.rate_per_sec = 50;
        c.rate_burst = 200;
    })
    .await;
    let (bob, bob_events) = client(&server, &dir.path().join("bob"), "bob", "bob-phone");
    connected(&bob).await;
    // Written while offline: alice's app queues 1,000 before her client logs in.
    let (alice, _) = client_with(
        &server,
        &dir.path().join("alice"),
        "alice",
        "alice-phone",
        |c| {
            c.server = "127.0.0.1:9".into(); // nowhere: stays offline
        },
    );
    let want: Vec<String> = (0..1000).map(|i| format!("m {i}")).collect();
    for t in &want {
        alice.send_text("bob", t).unwrap();
    }
    alice.shutdown();
    let (alice, _) = client(&server, &dir.path().join("alice"), "alice", "alice-phone");
    let started = std::time::Instant::now();
    until_within("alice's outbox to flush", Duration::from_secs(60), || {
        alice.outbox().unwrap().is_empty()
    })
    .await;
    let flushed = started.elapsed();
    until_within("bob to have all 1,000", Duration::from_secs(30), || {
        bob_events.received().len() >= 1000
    })
    .await;
    assert_eq!(texts(&bob, "alice"), want, "bob shows alice's order, once");
    assert_eq!(bob_events.texts(), want, "announced in order, once");
    let sent = alice
        .messages(ConversationKind::Direct, "bob", None, 2000)
        .unwrap();
    assert!(
        sent.iter()
            .all(|m| matches!(m.status, MessageStatus::Sent | MessageStatus::Delivered)),
        "every message ends Sent or Delivered"
    );
    let metrics = tern_testkit::server::metrics(&server).await;
    assert_eq!(
        rate_limited(&metrics),
        0,
        "no frame was refused by the rate limit"
    );
    // (1,000 - 200) / 50 = 16 s is the budget's floor.
    assert!(
        flushed < Duration::from_secs(30),
        "flushed in {flushed:?}, about as fast as the budget allows"
    );
    eprintln!("1,000 messages flushed in {flushed:?} at 50/s + 200");
    alice.shutdown();
    bob.shutdown();
}
