//! Chaos tests: the whole stack (tern-server, two tern-client cores) through the
//! impairment relay. Short versions run in CI; `netsim/chaos.sh` runs the long ones
//! (TERN_CHAOS_MESSAGES=2000, longer blackouts).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_client::{Client, ClientConfig, ConnectionState, ConversationKind, MessageStatus};
use tern_netsim::{RelayConfig, RelayHandle};
use tern_protocol::sim::LinkConfig;
use tern_server::server::ServerHandle;
use tern_testkit::client::{Recorder, client_at};
use tern_testkit::server::server;
use tern_testkit::until_within;

fn messages() -> usize {
    std::env::var("TERN_CHAOS_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

async fn relay(server: &ServerHandle, up: LinkConfig, down: LinkConfig, seed: u64) -> RelayHandle {
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), server.quic_addr);
    cfg.up = up;
    cfg.down = down;
    cfg.seed = seed;
    tern_netsim::start(cfg).await.unwrap()
}

fn client(
    server: &ServerHandle,
    via: &RelayHandle,
    data: &Path,
    user: &str,
) -> (Client, Arc<Recorder>) {
    let pem = std::fs::read(&server.cert_path).unwrap();
    let addr = via.local_addr().to_string();
    client_at(&addr, &pem, data, user, &format!("{user}-device"), |_| {})
}

fn all_sent(c: &Client, peer: &str, n: usize) -> bool {
    let m = c
        .messages(ConversationKind::Direct, peer, None, n as u32 + 10)
        .unwrap();
    m.len() == n
        && m.iter()
            .all(|m| matches!(m.status, MessageStatus::Sent | MessageStatus::Delivered))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_loss_jitter_reordering_and_duplication_deliver_exactly_once_in_order() {
    let n = messages();
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("server")).await;
    let link = LinkConfig {
        loss: 0.30,
        // 100 ms ± 50 ms one way: 50 ms plus a uniform 0-100 ms.
        delay: Duration::from_millis(50),
        jitter: Duration::from_millis(100),
        reorder: 0.05,
        reorder_delay: Duration::from_millis(40),
        duplicate: 0.02,
        blackouts: vec![],
        rate: None,
    };
    let r = relay(&s, link.clone(), link, 42).await;
    let (alice, alice_events) = client(&s, &r, &dir.path().join("alice"), "alice");
    let (bob, bob_events) = client(&s, &r, &dir.path().join("bob"), "bob");
    for c in [&alice, &bob] {
        let st = c
            .wait_for_state(Duration::from_secs(60), |s| {
                *s == ConnectionState::Connected
            })
            .await;
        assert_eq!(st, Some(ConnectionState::Connected));
    }
    let started = Instant::now();
    for i in 1..=n {
        alice.send_text("bob", &format!("m{i}")).unwrap();
    }
    let limit = Duration::from_secs(60 + n as u64 / 5);
    until_within("bob to receive everything", limit, || {
        bob_events.texts().len() >= n
    })
    .await;
    until_within("alice to see every message stored", limit, || {
        all_sent(&alice, "bob", n)
    })
    .await;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let expected: Vec<String> = (1..=n).map(|i| format!("m{i}")).collect();
    assert_eq!(bob_events.texts(), expected, "exactly once, in order");
    assert_eq!(alice_events.failures(), 0, "none reported failed");
    let stats = r.stats();
    println!(
        "{n} messages through 30% loss / 100 ± 50 ms / 5% reorder / 2% dup in {took:.1?}\n{stats}"
    );
    assert!(
        stats.up.lost > 0
            && stats.down.lost > 0
            && stats.up.duplicated > 0
            && stats.up.reordered > 0
    );
    alice.shutdown();
    bob.shutdown();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackout_while_sending_delays_but_loses_nothing() {
    let blackout = Duration::from_secs(
        std::env::var("TERN_CHAOS_BLACKOUT_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4),
    );
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("server")).await;
    let start_at = Duration::from_secs(3);
    let link = LinkConfig {
        delay: Duration::from_millis(20),
        blackouts: vec![(start_at, blackout)],
        ..LinkConfig::default()
    };
    let r = relay(&s, link.clone(), link, 7).await;
    let t0 = Instant::now();
    let (alice, alice_events) = client(&s, &r, &dir.path().join("alice"), "alice");
    let (bob, bob_events) = client(&s, &r, &dir.path().join("bob"), "bob");
    for c in [&alice, &bob] {
        assert_eq!(
            c.wait_for_state(Duration::from_secs(20), |s| *s
                == ConnectionState::Connected)
                .await,
            Some(ConnectionState::Connected)
        );
    }
    // Send one message every 100 ms from before the blackout until after it.
    let total = ((start_at + blackout).as_millis() / 100 + 20) as usize;
    let mut pending_during_blackout = 0;
    for i in 1..=total {
        alice.send_text("bob", &format!("b{i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = t0.elapsed();
        if now > start_at + Duration::from_millis(500) && now < start_at + blackout {
            let outbox = alice.outbox().unwrap().len();
            pending_during_blackout = pending_during_blackout.max(outbox);
        }
    }
    until_within(
        "everything to arrive after the path returned",
        Duration::from_secs(60),
        || bob_events.texts().len() >= total,
    )
    .await;
    until_within(
        "alice's statuses to settle",
        Duration::from_secs(30),
        || all_sent(&alice, "bob", total),
    )
    .await;
    let expected: Vec<String> = (1..=total).map(|i| format!("b{i}")).collect();
    assert_eq!(bob_events.texts(), expected);
    assert!(
        pending_during_blackout > 5,
        "messages waited as Pending during the blackout ({pending_during_blackout})"
    );
    assert_eq!(alice_events.failures(), 0);
    println!(
        "{total} messages across a {blackout:?} blackout; up to {pending_during_blackout} pending during it\n{}",
        r.stats()
    );
    alice.shutdown();
    bob.shutdown();
    s.shutdown().await;
}

/// The relay's counters and the heartbeats sent, half an interval after the next
/// heartbeat: its answer and ACKs are in, the following heartbeat is not yet sent.
async fn mid_period(c: &Client, r: &RelayHandle) -> (tern_netsim::RelayStats, u64) {
    let before = c.diagnostics().heartbeats_sent;
    while c.diagnostics().heartbeats_sent == before {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let half = Duration::from_millis(c.diagnostics().heartbeat_interval_ms / 2);
    tokio::time::sleep(half).await;
    (r.stats(), c.diagnostics().heartbeats_sent)
}

/// Time compressed 10x: a 3 s NAT timeout with heartbeat parameters scaled to match
/// (initial 1 s, step 1 s, resolution 0.5 s). The idle client must learn an interval
/// below the NAT timeout, stop expiring the mapping, and stay reachable for pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_behind_a_nat_learns_to_stay_reachable() {
    use tern_protocol::heartbeat::{HeartbeatConfig, HeartbeatProfile};
    let nat = Duration::from_secs(3);
    let idle = Duration::from_secs(
        std::env::var("TERN_CHAOS_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(40),
    );
    let dir = tempfile::tempdir().unwrap();
    let s = server(&dir.path().join("server")).await;
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), s.quic_addr);
    cfg.nat_timeout = Some(nat);
    let r = tern_netsim::start(cfg).await.unwrap();
    // Alice talks to the server directly; Bob is the idle phone behind the NAT.
    let direct = RelayConfig::new("127.0.0.1:0".parse().unwrap(), s.quic_addr);
    let d = tern_netsim::start(direct).await.unwrap();
    let (alice, _) = client(&s, &d, &dir.path().join("alice"), "alice");

    let mut config = ClientConfig::new(
        r.local_addr().to_string(),
        dir.path().join("bob"),
        "bob-phone",
    );
    config.ca_pem = Some(std::fs::read(&s.cert_path).unwrap());
    let profile = HeartbeatProfile {
        min: Duration::from_millis(500),
        max: Duration::from_secs(60),
    };
    config.heartbeat = HeartbeatConfig {
        foreground: profile.clone(),
        background: profile,
        initial: Duration::from_secs(1),
        step: Duration::from_secs(1),
        successes_to_grow: 2,
        resolution: Duration::from_millis(500),
        safety_margin_pct: 10,
        reply_timeout: Duration::from_millis(1500),
        max_missed: 3,
        max_networks: 4,
        reprobe_after: None,
        answer_every: 20,
    };
    let bob = Client::new(config).unwrap();
    let bob_events = Arc::new(Recorder::default());
    bob.set_listener(bob_events.clone());
    bob.login("bob", &tern_testkit::token("bob")).unwrap();
    for c in [&alice, &bob] {
        assert_eq!(
            c.wait_for_state(Duration::from_secs(20), |s| *s
                == ConnectionState::Connected)
                .await,
            Some(ConnectionState::Connected)
        );
    }
    bob.set_foreground(false);

    tokio::time::sleep(idle).await;
    let diag = bob.diagnostics();
    let expiries_at_lock = r.stats().nat_expiries;
    println!(
        "after {idle:?} idle behind a {nat:?} NAT: {diag:?}; relay {}",
        r.stats()
    );
    assert!(diag.heartbeat_locked, "learning finished: {diag:?}");
    assert!(
        diag.heartbeat_interval_ms < nat.as_millis() as u64,
        "interval below the NAT timeout: {diag:?}"
    );
    assert!(
        diag.heartbeat_interval_ms >= 2000,
        "not needlessly short: {diag:?}"
    );
    assert!(
        expiries_at_lock <= 3,
        "probing above the timeout expired the mapping only a few times"
    );

    // Locked: quiet keepalives, two packets each (the keepalive and QUIC's ACK), where
    // an answered heartbeat costs three. The window is cut half an interval after a
    // heartbeat at both ends, so each heartbeat in it comes with its ACK and none from
    // outside it (cut anywhere, an edge could count a heartbeat's packets but not the
    // heartbeat, as `tern-bench idle-cost` found).
    let (p0, h0) = mid_period(&bob, &r).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let (p1, h1) = mid_period(&bob, &r).await;
    let packets = p1.up.sent + p1.down.sent - p0.up.sent - p0.down.sent;
    let beats = h1 - h0;
    println!("locked: {packets} packets for {beats} heartbeats");
    // Under 3 s each (asserted above): at least five in 15 s. Answered, they would be
    // three packets each; the margin is for a stray QUIC packet or the one answered in
    // twenty.
    assert!(beats >= 5, "{beats} heartbeats in 15 s");
    assert!(
        packets as f64 <= 2.5 * beats as f64,
        "{packets} packets for {beats} heartbeats: not quiet"
    );

    // Still reachable: a push arrives promptly, and the mapping no longer expires.
    let sent = Instant::now();
    alice.send_text("bob", "are you still there?").unwrap();
    until_within(
        "the push to the idle client",
        Duration::from_secs(5),
        || bob_events.texts().len() == 1,
    )
    .await;
    println!("push reached the idle client in {:?}", sent.elapsed());
    assert_eq!(
        r.stats().nat_expiries,
        expiries_at_lock,
        "no expiry once the interval locked"
    );
    assert_eq!(bob.connection_state(), ConnectionState::Connected);
    alice.shutdown();
    bob.shutdown();
    s.shutdown().await;
}
