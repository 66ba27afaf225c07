//! A hostile (or broken) server, against the client's sans-IO sync machine in virtual
//! time: whatever it answers, the client never spins on it (issue 18). A server that
//! answers every sync with an empty page and `more = true` made the client ask again
//! at once, ~4,000 requests a second; and arbitrary frames must never make the machine
//! panic (the fuzz target `client_frames` runs the same on random bytes).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use tern_client::store::Db;
use tern_client::sync::{LoginInfo, SyncConfig, SyncMachine};
use tern_protocol::frame::Frame;
use tern_protocol::pb;
use tern_protocol::qos::QosConfig;

fn config() -> SyncConfig {
    SyncConfig {
        qos: QosConfig::uplink(),
        gap_wait: Duration::from_millis(300),
        sync_page: 200,
        full_history_sync: true,
        datagram_sends: true,
    }
}

fn login(head: u64) -> LoginInfo {
    LoginInfo {
        head,
        next_send_seq: 1,
        send_rate_per_sec: 50,
        send_burst: 200,
        store_generation: 7,
        restored_seq: 0,
    }
}

#[test]
fn empty_pages_that_claim_more_are_asked_for_with_backoff() {
    let t0 = Instant::now();
    let mut db = Db::open_in_memory("alice").unwrap();
    let mut sync = SyncMachine::new(config(), t0);
    sync.on_connected(login(1_000), t0, &mut db).unwrap();
    let mut now = t0;
    let mut requests = 0;
    let end = t0 + Duration::from_secs(120);
    let mut steps = 0;
    while now < end {
        steps += 1;
        assert!(
            steps < 100_000,
            "the client spins: {requests} requests by {:?}",
            now - t0
        );
        while let Some(t) = sync.poll_transmit() {
            if let Frame::SyncRequest(r) = t.frame {
                if r.log.is_empty() {
                    requests += 1;
                    assert!(requests < 1_000, "the client spins at {:?}", now - t0);
                    let page = Frame::SyncResponse(pb::SyncResponse {
                        request_id: r.request_id,
                        entries: vec![],
                        more: true,
                        head_seq: 1_000,
                        log: String::new(),
                    });
                    sync.handle_frame(page, now, &mut db).unwrap();
                }
            }
        }
        now = sync
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(1))
            .max(now + Duration::from_millis(1));
        sync.handle_timeout(now, &mut db).unwrap();
    }
    // Backoff from 1 s doubling to 30 s: about ten requests in two minutes.
    assert!(requests >= 3, "it keeps trying: {requests}");
    assert!(requests <= 15, "{requests} sync requests in two minutes");
}

fn entry() -> impl Strategy<Value = pb::TimelineEntry> {
    (
        0u64..50,
        any::<u64>(),
        "[a-c]{1,3}",
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(|(seq, id, who, body)| pb::TimelineEntry {
            seq,
            body: Some(pb::timeline_entry::Body::Message(pb::StoredMessage {
                server_msg_id: id % 100,
                client_msg_id: bytes::Bytes::from(if id % 7 == 0 {
                    vec![1; 3]
                } else {
                    vec![(id % 5) as u8; 16]
                }),
                sender: who.clone(),
                recipient: if id % 2 == 0 { "alice".into() } else { who },
                kind: (id % 4) as i32,
                body: body.into(),
                ..Default::default()
            })),
        })
}

fn server_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            proptest::collection::vec(entry(), 0..5),
            any::<bool>(),
            0u64..60,
            0u64..20
        )
            .prop_map(
                |(entries, more, head, id)| Frame::SyncResponse(pb::SyncResponse {
                    request_id: id,
                    entries,
                    more,
                    head_seq: head,
                    log: if id % 3 == 0 {
                        "g1".into()
                    } else {
                        String::new()
                    },
                })
            ),
        (entry(), 0u64..4).prop_map(|(e, l)| Frame::Push(pb::Push {
            entry: Some(e),
            log: if l == 0 { "g1".into() } else { String::new() },
        })),
        (0u64..60, 0u64..60, any::<u64>()).prop_map(|(latest, restored, gen_)| Frame::Logs(
            pb::Logs {
                request_id: 3,
                groups: vec![pb::ConversationSummary {
                    kind: 1,
                    conversation: "g1".into(),
                    latest_seq: latest,
                    log: "g1".into(),
                    restored_seq: restored,
                    joined_at: gen_ % 10,
                    ..Default::default()
                }],
                more: gen_ % 2 == 0,
            }
        )),
        (any::<[u8; 16]>(), 0i32..60, 0u64..10).prop_map(|(id, code, seq)| Frame::SendResult(
            pb::SendResult {
                client_msg_id: id.to_vec().into(),
                code,
                seq,
                expected_send_seq: seq,
                ..Default::default()
            }
        )),
        (0u64..20).prop_map(|id| Frame::error(pb::ErrorCode::Internal, "x", id)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever a server sends, in whatever order, the machine neither panics nor spins,
    /// and its store stays usable.
    #[test]
    fn any_server_frames_are_survived(frames in proptest::collection::vec(server_frame(), 1..40), head in 0u64..60) {
        let t0 = Instant::now();
        let mut db = Db::open_in_memory("alice").unwrap();
        let mut sync = SyncMachine::new(config(), t0);
        sync.on_connected(login(head), t0, &mut db).unwrap();
        let mut now = t0;
        let mut sent = 0;
        for f in frames {
            now += Duration::from_millis(50);
            let _ = sync.handle_frame(f, now, &mut db).unwrap();
            sync.handle_timeout(now, &mut db).unwrap();
            while sync.poll_transmit().is_some() {
                sent += 1;
            }
        }
        prop_assert!(sent < 2_000, "{sent} frames for 40 inputs");
        db.cursor().unwrap();
    }
}

/// A server that sends a frame over the client's limit right after login (the lockout
/// of issue 18, seen from the client): the client reports it in its diagnostics and
/// backs off, even with a message waiting (which used to race fresh connections every
/// 500 ms for a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_frame_is_reported_and_backed_off() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tern_protocol::io::read_frame;

    let dir = tempfile::tempdir().unwrap();
    let config = tern_testkit::server::dev_config(dir.path());
    let tls = tern_server::server::tls_material(&config).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(tls.certs.clone(), tls.key.clone_key())
        .unwrap();
    crypto.alpn_protocols = vec![tern_protocol::ALPN.to_vec()];
    let server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap(),
    ));
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let logins = Arc::new(AtomicUsize::new(0));
    let counted = logins.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let Ok((mut send, mut recv)) = conn.accept_bi().await else {
                    return;
                };
                let mut buf = bytes::BytesMut::new();
                if !matches!(
                    read_frame(&mut recv, &mut buf, 64 * 1024).await,
                    Ok(Some((_, Frame::Login(_))))
                ) {
                    return;
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let ok = Frame::LoginResult(pb::LoginResult {
                    session_id: "s".into(),
                    heartbeat_timeout_ms: 60_000,
                    max_body_bytes: 65_536,
                    send_rate_per_sec: 50,
                    send_burst: 200,
                    next_send_seq: 1,
                    store_generation: 1,
                    ..Default::default()
                });
                let _ = send.write_all(&ok.to_bytes(0)).await;
                // A SyncResponse header announcing a 1 MiB body, and some of it.
                let mut huge = vec![tern_protocol::WIRE_VERSION, 0x21, 0];
                let mut len = 1u32 << 20;
                while len >= 0x80 {
                    huge.push((len as u8) | 0x80);
                    len >>= 7;
                }
                huge.push(len as u8);
                huge.extend(std::iter::repeat_n(0u8, 1000));
                let _ = send.write_all(&huge).await;
                let _ = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await;
            });
        }
    });

    let pem = std::fs::read(&tls.cert_path).unwrap();
    let (client, _) = tern_testkit::client::client_at(
        &addr.to_string(),
        &pem,
        &dir.path().join("client"),
        "alice",
        "phone",
        |_| {},
    );
    client.send_text("bob", "waiting to be sent").unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let n = logins.load(Ordering::SeqCst);
    let d = client.diagnostics();
    let why = d.last_error.expect("the unreadable frame is reported");
    assert!(why.contains("bad frame"), "{why}");
    // Backoff with full jitter from 0.5 s doubling: a handful of attempts in 4 s. An
    // immediate reconnect (the old behaviour with a message waiting) makes hundreds.
    eprintln!("{n} logins in 4 s");
    assert!(
        (1..=8).contains(&n),
        "{n} logins in 4 s: the client must back off"
    );
}
