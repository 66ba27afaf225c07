//! The client on networks that block UDP (issue 16): it logs in over TLS-over-TCP
//! within a second, messages flow in order, and when UDP comes back it moves to QUIC
//! by itself, nothing lost or duplicated. Real server, `tern-client`s; UDP is blocked
//! by pointing QUIC at a socket that answers nothing, or by a `tern-netsim` relay in
//! a blackout.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tern_client::{ConnectionState, ConversationKind, TransportMode};
use tern_netsim::RelayConfig;
use tern_protocol::sim::LinkConfig;
use tern_testkit::client::{client_at, connected, texts};
use tern_testkit::until_within;

fn transport(c: &tern_client::Client) -> Option<String> {
    c.diagnostics().transport
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_blocked_the_client_logs_in_over_tcp_within_a_second() {
    let s = TestServer::start(|_| {}).await;
    let pem = std::fs::read(&s.handle.cert_path).unwrap();
    // A UDP "server" that answers nothing: QUIC handshakes vanish, as on a network
    // that drops UDP.
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tcp = s.tcp_addr().to_string();
    let started = Instant::now();
    let (alice, _) = client_at(
        &black_hole.local_addr().unwrap().to_string(),
        &pem,
        &dir.path().join("a"),
        "alice",
        "a-laptop",
        |c| c.tcp_server = Some(tcp.clone()),
    );
    let reached = alice
        .wait_for_state(Duration::from_secs(5), |s| *s == ConnectionState::Connected)
        .await;
    let took = started.elapsed();
    assert_eq!(reached, Some(ConnectionState::Connected));
    eprintln!("logged in over TCP {took:?} after start (UDP blocked)");
    assert!(took < Duration::from_secs(1), "{took:?}");
    until_within("diagnostics say tcp", Duration::from_secs(2), || {
        transport(&alice).as_deref() == Some("tcp")
    })
    .await;
    // Bob on QUIC, and a second device of Alice's on QUIC only.
    let quic = s.addr().to_string();
    let (bob, _) = client_at(&quic, &pem, &dir.path().join("b"), "bob", "b-phone", |c| {
        c.transport = TransportMode::Quic
    });
    let (alice2, _) = client_at(
        &quic,
        &pem,
        &dir.path().join("a2"),
        "alice",
        "a-phone",
        |c| {
            c.transport = TransportMode::Quic;
            // Another platform: the default kick policy keeps one session per platform.
            c.platform = tern_client::Platform::Ios;
        },
    );
    connected(&bob).await;
    connected(&alice2).await;
    for i in 0..20 {
        alice.send_text("bob", &format!("tcp {i}")).unwrap();
    }
    for i in 0..20 {
        bob.send_text("alice", &format!("quic {i}")).unwrap();
    }
    let from_alice: Vec<String> = (0..20).map(|i| format!("tcp {i}")).collect();
    let from_bob: Vec<String> = (0..20).map(|i| format!("quic {i}")).collect();
    let only = |all: Vec<String>, p: &str| -> Vec<String> {
        all.into_iter().filter(|t| t.starts_with(p)).collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && !(only(texts(&bob, "alice"), "tcp") == from_alice
            && only(texts(&alice, "bob"), "quic") == from_bob
            && only(texts(&alice2, "bob"), "quic") == from_bob
            && only(texts(&alice2, "bob"), "tcp") == from_alice)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(only(texts(&bob, "alice"), "tcp"), from_alice, "bob");
    assert_eq!(only(texts(&alice, "bob"), "quic"), from_bob, "alice");
    assert_eq!(
        only(texts(&alice2, "bob"), "quic"),
        from_bob,
        "alice2 from bob"
    );
    assert_eq!(only(texts(&alice2, "bob"), "tcp"), from_alice, "alice2 own");
    // Both of Alice's devices hold the same conversation in the same order.
    assert_eq!(texts(&alice, "bob"), texts(&alice2, "bob"));
    assert_eq!(transport(&alice2).as_deref(), Some("quic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_udp_comes_back_the_client_moves_to_quic_without_loss_or_duplicates() {
    let s = TestServer::start(|_| {}).await;
    let pem = std::fs::read(&s.handle.cert_path).unwrap();
    // UDP through a relay that drops everything for the first 4 s.
    let link = LinkConfig {
        blackouts: vec![(Duration::ZERO, Duration::from_secs(4))],
        ..LinkConfig::default()
    };
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), s.addr());
    cfg.up = link.clone();
    cfg.down = link;
    let relay = tern_netsim::start(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tcp = s.tcp_addr().to_string();
    let (alice, alice_events) = client_at(
        &relay.local_addr().to_string(),
        &pem,
        &dir.path().join("a"),
        "alice",
        "a-laptop",
        |c| {
            c.tcp_server = Some(tcp.clone());
            c.quic_reprobe = Duration::from_secs(1);
        },
    );
    let (bob, _) = client_at(
        &s.addr().to_string(),
        &pem,
        &dir.path().join("b"),
        "bob",
        "b-phone",
        |_| {},
    );
    connected(&alice).await;
    connected(&bob).await;
    until_within("alice on tcp", Duration::from_secs(2), || {
        transport(&alice).as_deref() == Some("tcp")
    })
    .await;
    // Messages throughout the move.
    let total = 60;
    let mut moved_at = None;
    let start = Instant::now();
    for i in 0..total {
        alice.send_text("bob", &format!("m{i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if moved_at.is_none() && transport(&alice).as_deref() == Some("quic") {
            moved_at = Some(start.elapsed());
        }
    }
    let expected: Vec<String> = (0..total).map(|i| format!("m{i}")).collect();
    until_within("bob has every message", Duration::from_secs(20), || {
        texts(&bob, "alice").len() >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts(&bob, "alice"), expected, "once each, in order");
    let sent = alice
        .messages(ConversationKind::Direct, "bob", None, 1000)
        .unwrap();
    assert_eq!(sent.len(), total);
    let moved_at = moved_at.expect("the client moved to QUIC once UDP worked");
    // The app was told: first TCP, then QUIC.
    assert_eq!(alice_events.transports(), ["tcp", "quic"]);
    eprintln!("moved to QUIC {moved_at:?} after start (UDP back at 4 s, re-probe every 1 s)");
    assert!(moved_at < Duration::from_secs(8), "{moved_at:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_chats_with_a_quic_client() {
    let s = TestServer::start(|_| {}).await;
    let pem = std::fs::read(&s.handle.cert_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ws = s.ws_addr().to_string();
    let (alice, _) = client_at(
        &s.addr().to_string(),
        &pem,
        &dir.path().join("a"),
        "alice",
        "a-browser",
        |c| {
            c.transport = TransportMode::WebSocket;
            c.ws_server = Some(ws.clone());
        },
    );
    let (bob, _) = client_at(
        &s.addr().to_string(),
        &pem,
        &dir.path().join("b"),
        "bob",
        "b-phone",
        |_| {},
    );
    connected(&alice).await;
    connected(&bob).await;
    until_within("diagnostics say ws", Duration::from_secs(2), || {
        transport(&alice).as_deref() == Some("ws")
    })
    .await;
    for i in 0..20 {
        alice.send_text("bob", &format!("ws {i}")).unwrap();
    }
    let want: Vec<String> = (0..20).map(|i| format!("ws {i}")).collect();
    until_within("bob has them", Duration::from_secs(20), || {
        texts(&bob, "alice") == want
    })
    .await;
    bob.send_text("alice", "back over quic").unwrap();
    until_within("alice has the answer", Duration::from_secs(20), || {
        texts(&alice, "bob").last().map(String::as_str) == Some("back over quic")
    })
    .await;
    let mut all = want.clone();
    all.push("back over quic".into());
    assert_eq!(texts(&alice, "bob"), all);
}

/// Through an impaired TCP path (40 ms delay each way, a 2 s stall, then a cut in the
/// middle of a burst): the TCP-only client reconnects by itself, and the receiver
/// shows every message once, in the sender's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_stalled_and_cut_tcp_path_nothing_is_lost_or_duplicated() {
    use tern_netsim::tcp::{TcpRelayConfig, start_tcp};
    let s = TestServer::start(|_| {}).await;
    let pem = std::fs::read(&s.handle.cert_path).unwrap();
    let mut cfg = TcpRelayConfig::new("127.0.0.1:0".parse().unwrap(), s.tcp_addr());
    cfg.delay = Duration::from_millis(40);
    cfg.stalls = vec![(Duration::from_secs(2), Duration::from_secs(2))];
    let relay = start_tcp(cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let via = relay.local_addr().to_string();
    let (alice, rec) = client_at(
        &s.addr().to_string(),
        &pem,
        &dir.path().join("a"),
        "alice",
        "a-laptop",
        |c| {
            c.transport = TransportMode::Tcp;
            c.tcp_server = Some(via.clone());
        },
    );
    let (bob, _) = client_at(
        &s.addr().to_string(),
        &pem,
        &dir.path().join("b"),
        "bob",
        "b-phone",
        |_| {},
    );
    connected(&alice).await;
    connected(&bob).await;
    let total = 80;
    for i in 0..total {
        alice.send_text("bob", &format!("t{i}")).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if i == 60 {
            relay.cut_now();
        }
    }
    let expected: Vec<String> = (0..total).map(|i| format!("t{i}")).collect();
    until_within("bob has every message", Duration::from_secs(30), || {
        texts(&bob, "alice").len() >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(texts(&bob, "alice"), expected, "once each, in order");
    let connects = rec
        .states()
        .iter()
        .filter(|s| **s == ConnectionState::Connected)
        .count();
    assert!(
        connects >= 2,
        "the cut made the client reconnect: {:?}",
        rec.states()
    );
    let sent = alice
        .messages(ConversationKind::Direct, "bob", None, 1000)
        .unwrap();
    assert!(
        sent.iter()
            .all(|m| !matches!(m.status, tern_client::MessageStatus::Failed { .. })),
        "nothing failed"
    );
}

/// A minimal HTTP CONNECT proxy: answers 200 and joins the two connections. Counts the
/// tunnels it opened.
async fn connect_proxy() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = tunnels.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (addr, tunnels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_an_http_proxy_over_websocket_and_tcp() {
    use std::sync::atomic::Ordering;
    let s = TestServer::start(|_| {}).await;
    let pem = std::fs::read(&s.handle.cert_path).unwrap();
    let (proxy, tunnels) = connect_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (ws, tcp) = (s.ws_addr().to_string(), s.tcp_addr().to_string());
    // WebSocket through the proxy.
    let (alice, _) = client_at(
        &s.addr().to_string(),
        &pem,
        &dir.path().join("a"),
        "alice",
        "a-browser",
        |c| {
            c.transport = TransportMode::WebSocket;
            c.ws_server = Some(ws.clone());
            c.http_proxy = Some(proxy.to_string());
        },
    );
    // Automatic with UDP blocked: TLS over TCP through the proxy.
    let (carol, _) = client_at(
        &black_hole.local_addr().unwrap().to_string(),
        &pem,
        &dir.path().join("c"),
        "carol",
        "c-laptop",
        |c| {
            c.tcp_server = Some(tcp.clone());
            c.http_proxy = Some(proxy.to_string());
        },
    );
    let (bob, _) = client_at(
        &s.addr().to_string(),
        &pem,
        &dir.path().join("b"),
        "bob",
        "b-phone",
        |_| {},
    );
    connected(&alice).await;
    connected(&carol).await;
    connected(&bob).await;
    alice.send_text("bob", "via proxy, websocket").unwrap();
    carol.send_text("bob", "via proxy, tcp").unwrap();
    until_within("bob has both", Duration::from_secs(20), || {
        texts(&bob, "alice") == ["via proxy, websocket"]
            && texts(&bob, "carol") == ["via proxy, tcp"]
    })
    .await;
    assert!(
        tunnels.load(Ordering::SeqCst) >= 2,
        "both went through the proxy"
    );
    assert_eq!(transport(&alice).as_deref(), Some("ws"));
    assert_eq!(transport(&carol).as_deref(), Some("tcp"));
}
