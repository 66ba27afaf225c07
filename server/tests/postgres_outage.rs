//! PostgreSQL stopped for 10 s while a client sends: the server keeps its sessions,
//! answers the sends it cannot store with STORE_UNAVAILABLE (retryable: the client's
//! outbox pauses and sends again), and catches up when the database returns — every
//! message once, in the sender's order, none reported failed.
//!
//! Stops and starts the machine's PostgreSQL cluster with `server/dev-postgres.sh`
//! (root or sudo), so it lives alone in this test binary (cargo runs test binaries one
//! after another). Runs when `TERN_TEST_PG` is set (see
//! `tern_server::store::postgres::testing`).

use std::process::Command;
use std::time::{Duration, Instant};

use tern_server::store::Store;
use tern_server::store::postgres::{PgSettings, PgStore, testing};
use tern_testkit::client::client_at;
use tern_testkit::server::TestServer;
use tern_testkit::until_within;

fn cluster(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/dev-postgres.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(action)
        .output()
        .expect("run dev-postgres.sh");
    assert!(
        out.status.success(),
        "dev-postgres.sh {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_under_load_loses_and_duplicates_nothing() {
    const TOTAL: usize = 500;
    let Some(url) = testing::scratch().await else {
        return;
    };
    let s = TestServer::start(|c| {
        c.store = Some(PgSettings::new(&url));
        c.rate_per_sec = 100_000;
        c.rate_burst = 100_000;
    })
    .await;
    let pem = std::fs::read(&s.handle.cert_path).unwrap();
    let addr = s.addr().to_string();
    let (alice, alice_seen) = client_at(
        &addr,
        &pem,
        &s.dir.path().join("a"),
        "alice",
        "alice-phone",
        |_| {},
    );
    let (bob, bob_seen) = client_at(
        &addr,
        &pem,
        &s.dir.path().join("b"),
        "bob",
        "bob-phone",
        |_| {},
    );
    tern_testkit::client::connected(&alice).await;
    tern_testkit::client::connected(&bob).await;

    // 500 messages over about 15 s; the database is down from the 2nd second to the 12th.
    let mut down_at = None;
    let mut up_at = None;
    let started = Instant::now();
    for i in 0..TOTAL {
        alice.send_text("bob", &format!("p{i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        if down_at.is_none() && started.elapsed() > Duration::from_secs(2) {
            cluster("stop");
            down_at = Some((Instant::now(), bob_seen.texts().len()));
        }
        if let Some((at, _)) = down_at {
            if up_at.is_none() && at.elapsed() >= Duration::from_secs(10) {
                cluster("start");
                up_at = Some(Instant::now());
            }
        }
    }
    let up_at = match up_at {
        Some(t) => t,
        None => {
            let wait = Duration::from_secs(10).saturating_sub(down_at.unwrap().0.elapsed());
            tokio::time::sleep(wait).await;
            cluster("start");
            Instant::now()
        }
    };
    until_within("bob to have everything", Duration::from_secs(60), || {
        bob_seen.texts().len() >= TOTAL
    })
    .await;
    let caught_up = up_at.elapsed();
    until_within(
        "alice's messages all acknowledged",
        Duration::from_secs(60),
        || tern_testkit::client::all_acknowledged(&alice, "bob", TOTAL as u32 + 10),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expected: Vec<String> = (0..TOTAL).map(|i| format!("p{i}")).collect();
    assert_eq!(bob_seen.texts(), expected, "exactly once, in order");
    assert_eq!(alice_seen.failures(), 0, "none reported failed");
    // The store itself holds each once, in order.
    let store = PgStore::open(&PgSettings::new(&url)).await.unwrap();
    let mut stored = vec![];
    let mut after = 0;
    loop {
        let page = store.timeline("bob", after, 0, 500).await.unwrap();
        after = page.entries.last().map_or(after, |e| e.seq);
        for e in &page.entries {
            if let Some(tern_protocol::pb::timeline_entry::Body::Message(m)) = &e.body {
                stored.push(String::from_utf8(m.body.to_vec()).unwrap());
            }
        }
        if !page.more {
            break;
        }
    }
    assert_eq!(stored, expected, "stored once each, in order");
    let (_, before_outage) = down_at.unwrap();
    println!(
        "PostgreSQL down 10 s after {before_outage} of {TOTAL} delivered; all {TOTAL} once, in order; caught up {caught_up:.1?} after it returned"
    );
    alice.shutdown();
    bob.shutdown();
}
