//! End-to-end tests over real QUIC on loopback: login, kickout, c2c online and offline,
//! sync in pages, summaries, idempotent retransmit, heartbeats and their expiry, the
//! HTTP API.

mod common;

use std::time::Duration;

use common::*;
use tern_protocol::frame::Frame;
use tern_protocol::pb;
use tern_protocol::pb::timeline_entry::Body;

#[tokio::test]
async fn login_succeeds_and_bad_credentials_get_their_codes() {
    let s = TestServer::start(|_| {}).await;
    let (_alice, r) =
        TestClient::login(s.addr(), s.cert(), "alice", "phone", pb::Platform::Android).await;
    assert_eq!(r.code, pb::ErrorCode::Ok as i32);
    assert!(r.heartbeat_timeout_ms > 0 && r.max_body_bytes > 0 && !r.session_id.is_empty());

    let login = |user: &str, token: String| pb::Login {
        user_id: user.into(),
        token,
        device_id: "d".into(),
        platform: pb::Platform::Ios as i32,
        client_version: "1.0".into(),
        inbox_cursor: 0,
    };
    let cases = [
        (login("bob", "not-a-token".into()), pb::ErrorCode::BadToken),
        (login("bob", token("alice")), pb::ErrorCode::BadToken),
        (
            login(
                "bob",
                tern_server::auth::mint(b"some-other-secret-123", "bob", None, 60),
            ),
            pb::ErrorCode::BadToken,
        ),
        (
            login("bad user id", token("bad user id")),
            pb::ErrorCode::InvalidArgument,
        ),
    ];
    for (l, code) in cases {
        let (c, r) = TestClient::login_with(s.addr(), s.cert(), l).await;
        assert_eq!(r.code, code as i32, "{r:?}");
        c.closed().await;
    }
    // An expired token (minted with a ttl of 0 is already expired).
    let expired = tern_server::auth::mint(
        tern_server::config::DEV_TOKEN_SECRET.as_bytes(),
        "bob",
        None,
        0,
    );
    let (_, r) = TestClient::login_with(s.addr(), s.cert(), login("bob", expired)).await;
    assert_eq!(r.code, pb::ErrorCode::TokenExpired as i32);
    assert_eq!(s.handle.shared.registry.len(), 1, "only alice is online");
}

#[tokio::test]
async fn nothing_but_login_is_accepted_before_login() {
    let s = TestServer::start(|_| {}).await;
    let mut c = TestClient::connect(s.addr(), s.cert()).await;
    c.send(Frame::SyncRequest(pb::SyncRequest {
        request_id: 1,
        after_seq: 0,
        until_seq: 0,
        limit: 10,
        ..Default::default()
    }))
    .await;
    match c.recv().await {
        Some(Frame::Error(e)) => assert_eq!(e.code, pb::ErrorCode::UnexpectedFrame as i32),
        other => panic!("expected an error, got {other:?}"),
    }
    c.closed().await;
}

#[tokio::test]
async fn min_client_version_and_banned_users() {
    let s = TestServer::start(|c| {
        c.min_client_version = Some("2.0.0".into());
        c.banned_users = vec!["mallory".into()];
    })
    .await;
    let (_, r) =
        TestClient::login(s.addr(), s.cert(), "alice", "phone", pb::Platform::Android).await;
    assert_eq!(r.code, pb::ErrorCode::UpgradeRequired as i32);
    let mut l = pb::Login {
        user_id: "mallory".into(),
        token: token("mallory"),
        device_id: "d".into(),
        platform: 1,
        client_version: "2.1".into(),
        inbox_cursor: 0,
    };
    let (_, r) = TestClient::login_with(s.addr(), s.cert(), l.clone()).await;
    assert_eq!(r.code, pb::ErrorCode::Banned as i32);
    l.user_id = "alice".into();
    l.token = token("alice");
    let (_, r) = TestClient::login_with(s.addr(), s.cert(), l).await;
    assert_eq!(r.code, pb::ErrorCode::Ok as i32);
}

#[tokio::test]
async fn a_second_device_of_the_same_platform_kicks_the_first() {
    let s = TestServer::start(|_| {}).await;
    let mut phone1 = s.login("alice", "phone-1").await;
    let (desktop, r) =
        TestClient::login(s.addr(), s.cert(), "alice", "laptop", pb::Platform::Desktop).await;
    assert_eq!(r.code, 0, "another platform coexists");
    let _phone2 = s.login("alice", "phone-2").await;
    match phone1.recv().await {
        Some(Frame::Kickout(k)) => {
            assert_eq!(k.reason, pb::KickReason::LoginElsewhere as i32);
            assert!(k.text.contains("phone-2"), "{}", k.text);
        }
        other => panic!("expected a kickout, got {other:?}"),
    }
    phone1.closed().await;
    let devices: Vec<String> = s
        .handle
        .shared
        .registry
        .sessions_of("alice")
        .into_iter()
        .map(|s| s.device)
        .collect();
    assert_eq!(devices.len(), 2);
    assert!(devices.contains(&"laptop".to_string()) && devices.contains(&"phone-2".to_string()));
    drop(desktop);
}

#[tokio::test]
async fn per_user_policy_keeps_one_session() {
    let s = TestServer::start(|c| c.kick_policy = tern_server::registry::KickPolicy::PerUser).await;
    let mut phone = s.login("alice", "phone").await;
    let (_desktop, _) =
        TestClient::login(s.addr(), s.cert(), "alice", "laptop", pb::Platform::Desktop).await;
    assert!(matches!(phone.recv().await, Some(Frame::Kickout(_))));
    assert_eq!(s.handle.shared.registry.len(), 1);
}

#[tokio::test]
async fn c2c_online_push_ack_and_delivered_receipt() {
    let s = TestServer::start(|_| {}).await;
    let mut alice = s.login("alice", "phone").await;
    let mut bob = s.login("bob", "phone").await;
    let id = alice.chat("bob", "hi bob").await;
    let r = alice.send_result().await;
    assert_eq!(r.code, 0);
    assert_eq!(r.client_msg_id[..], id.0[..]);
    assert_eq!(r.seq, 1, "first entry in alice's timeline");
    assert!(r.server_msg_id > 0 && r.server_ts_ms > 0);

    let entry = bob.push().await;
    assert_eq!(entry.seq, 1);
    assert_eq!(text_of(&entry), "hi bob");
    match &entry.body {
        Some(Body::Message(m)) => {
            assert_eq!(
                m.sender, "alice",
                "the server fills in the authenticated sender"
            );
            assert_eq!(m.server_msg_id, r.server_msg_id);
        }
        _ => unreachable!(),
    }
    bob.send(Frame::DeliveryAck(pb::DeliveryAck {
        cumulative_seq: 1,
        seqs: vec![],
        ..Default::default()
    }))
    .await;
    let receipt = alice.push().await;
    match receipt.body {
        Some(Body::Receipt(rc)) => {
            assert_eq!(rc.status, pb::receipt::Status::Delivered as i32);
            assert_eq!(rc.by_user, "bob");
            assert_eq!(rc.up_to_server_msg_id, r.server_msg_id);
        }
        other => panic!("expected a receipt, got {other:?}"),
    }
    assert_eq!(
        receipt.seq, 2,
        "the receipt is the next entry in alice's timeline"
    );
}

#[tokio::test]
async fn unacknowledged_pushes_are_retransmitted() {
    let s = TestServer::start(|_| {}).await;
    let mut alice = s.login("alice", "phone").await;
    let mut bob = s.login("bob", "phone").await;
    alice.chat("bob", "are you there").await;
    let first = bob.push().await;
    // No ACK: the server's QoS engine resends the same entry (RTO starts at 1 s).
    let again = bob.push().await;
    assert_eq!(first, again);
    bob.send(Frame::DeliveryAck(pb::DeliveryAck {
        cumulative_seq: first.seq,
        seqs: vec![],
        ..Default::default()
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    bob.send(Frame::Heartbeat(pb::Heartbeat::default())).await;
    match bob.recv().await {
        Some(Frame::HeartbeatReply(_)) => {}
        other => panic!("after the ACK no more retransmissions are expected, got {other:?}"),
    }
}

#[tokio::test]
async fn offline_recipient_gets_summaries_then_syncs_in_pages() {
    let s = TestServer::start(|_| {}).await;
    let mut alice = s.login("alice", "phone").await;
    let mut carol = s.login("carol", "phone").await;
    for i in 1..=25 {
        alice.chat("bob", &format!("message {i}")).await;
    }
    for _ in 0..25 {
        assert_eq!(alice.send_result().await.code, 0);
    }
    carol.chat("bob", "from carol").await;
    assert_eq!(carol.send_result().await.code, 0);

    let (mut bob, r) =
        TestClient::login(s.addr(), s.cert(), "bob", "phone", pb::Platform::Ios).await;
    assert_eq!(r.inbox_head_seq, 26);
    bob.send(Frame::SummariesRequest(pb::SummariesRequest {
        request_id: 7,
        last_messages: 3,
        limit: 10,
    }))
    .await;
    let sums = match bob.recv().await {
        Some(Frame::Summaries(x)) => x,
        other => panic!("{other:?}"),
    };
    assert_eq!(sums.request_id, 7);
    assert_eq!(sums.head_seq, 26);
    let convs: Vec<(&str, u64, usize)> = sums
        .conversations
        .iter()
        .map(|c| (c.conversation.as_str(), c.unread, c.last.len()))
        .collect();
    assert_eq!(
        convs,
        vec![("carol", 1, 1), ("alice", 25, 3)],
        "most recent first, with unread counts"
    );
    assert_eq!(
        sums.conversations[1]
            .last
            .iter()
            .map(text_of)
            .collect::<Vec<_>>(),
        vec!["message 23", "message 24", "message 25"]
    );

    let mut cursor = 0;
    let mut texts = vec![];
    let mut pages = vec![];
    loop {
        bob.send(Frame::SyncRequest(pb::SyncRequest {
            request_id: cursor + 100,
            after_seq: cursor,
            until_seq: 0,
            limit: 10,
            ..Default::default()
        }))
        .await;
        let page = match bob.recv().await {
            Some(Frame::SyncResponse(p)) => p,
            other => panic!("{other:?}"),
        };
        assert_eq!(page.request_id, cursor + 100);
        pages.push((page.entries.len(), page.more));
        for e in &page.entries {
            assert_eq!(e.seq, cursor + 1, "contiguous seqs");
            cursor = e.seq;
            texts.push(text_of(e));
        }
        if !page.more {
            break;
        }
    }
    assert_eq!(pages, vec![(10, true), (10, true), (6, false)]);
    let expected: Vec<String> = (1..=25)
        .map(|i| format!("message {i}"))
        .chain(["from carol".to_string()])
        .collect();
    assert_eq!(texts, expected);
    // A bounded range pull, as used to fill a gap.
    bob.send(Frame::SyncRequest(pb::SyncRequest {
        request_id: 1,
        after_seq: 4,
        until_seq: 6,
        limit: 100,
        ..Default::default()
    }))
    .await;
    match bob.recv().await {
        Some(Frame::SyncResponse(p)) => {
            assert_eq!(
                p.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
                vec![5, 6]
            );
            assert!(!p.more);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_retransmitted_message_is_stored_once() {
    let s = TestServer::start(|_| {}).await;
    let mut alice = s.login("alice", "phone").await;
    let id = tern_protocol::ClientMsgId::generate(1_700_000_000_000, &mut rand::rng());
    alice.send(chat_frame(id, "bob", "once")).await;
    let first = alice.send_result().await;
    let mut retransmit = chat_frame(id, "bob", "once")
        .to_bytes(tern_protocol::frame::FLAG_RETRANSMIT)
        .to_vec();
    retransmit.extend_from_slice(&chat_frame(id, "bob", "once").to_bytes(0));
    alice.send_raw(&retransmit).await;
    let second = alice.send_result().await;
    let third = alice.send_result().await;
    assert_eq!(first, second);
    assert_eq!(first, third);
    let (bob, r) = TestClient::login(s.addr(), s.cert(), "bob", "phone", pb::Platform::Ios).await;
    assert_eq!(r.inbox_head_seq, 1, "bob's inbox holds it once");
    // And across a restart of the server (idempotency is in the store).
    let data = s.dir.path().to_owned();
    s.handle.shutdown().await;
    let handle = tern_server::server::start(tern_testkit::server::dev_config(&data))
        .await
        .unwrap();
    let (mut alice, _) = TestClient::login(
        handle.quic_addr,
        handle.cert_der.clone(),
        "alice",
        "phone",
        pb::Platform::Android,
    )
    .await;
    alice.send(chat_frame(id, "bob", "once")).await;
    assert_eq!(alice.send_result().await, first);
    bob.conn.close(0u32.into(), b"");
    handle.shutdown().await;
}

#[tokio::test]
async fn heartbeat_replies_with_the_observed_address_and_silence_expires_the_session() {
    let s = TestServer::start(|c| c.heartbeat_timeout = Duration::from_millis(1500)).await;
    let mut bob = s.login("bob", "phone").await;
    bob.send(Frame::Heartbeat(pb::Heartbeat {
        interval_ms: 30_000,
        ..Default::default()
    }))
    .await;
    match bob.recv().await {
        Some(Frame::HeartbeatReply(r)) => {
            assert_eq!(
                r.observed_addr,
                bob.endpoint.local_addr().unwrap().to_string()
            );
            assert!(r.server_time_ms > 0);
        }
        other => panic!("{other:?}"),
    }
    // Stay silent past the timeout: the server drops the session and says why.
    match bob.recv().await {
        Some(Frame::Kickout(k)) => assert_eq!(k.reason, pb::KickReason::IdleTimeout as i32),
        other => panic!("expected an idle kickout, got {other:?}"),
    }
    bob.closed().await;
    assert!(
        s.handle.shared.registry.sessions_of("bob").is_empty(),
        "a dead session is not kept online"
    );
}

/// A quiet keepalive (issue 17) is not answered (QUIC's ACK is the client's answer:
/// two packets on the wire, not three), and it keeps the session alive like any frame.
#[tokio::test]
async fn quiet_keepalives_are_not_answered_and_keep_the_session() {
    let s = TestServer::start(|c| c.heartbeat_timeout = Duration::from_millis(1500)).await;
    let mut bob = s.login("bob", "phone").await;
    let quiet = || {
        Frame::Heartbeat(pb::Heartbeat {
            interval_ms: 500,
            quiet: true,
        })
    };
    // Three heartbeat timeouts' worth of quiet keepalives: no answer, no idle kickout.
    for _ in 0..9 {
        bob.send(quiet()).await;
        assert_eq!(
            bob.recv_within(Duration::from_millis(500)).await,
            Err(()),
            "a quiet keepalive is answered"
        );
    }
    assert_eq!(s.handle.shared.registry.sessions_of("bob").len(), 1);
    // An answered heartbeat still is.
    bob.send(Frame::Heartbeat(pb::Heartbeat {
        interval_ms: 500,
        quiet: false,
    }))
    .await;
    assert!(matches!(bob.recv().await, Some(Frame::HeartbeatReply(_))));
}

#[tokio::test]
async fn http_api_sends_system_messages_reports_presence_and_kicks() {
    let s = TestServer::start(|_| {}).await;
    let mut bob = s.login("bob", "phone").await;
    let http = api();

    let unauth = http
        .post(s.http("/v1/messages"))
        .json(&serde_json::json!({"to": "bob", "text": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);

    let body = serde_json::json!({"to": "bob", "text": "your order shipped", "client_msg_id": "0123456789abcdef0123456789abcdef"});
    let r: serde_json::Value = http
        .post(s.http("/v1/messages"))
        .header("authorization", bearer())
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["duplicate"], false);
    let entry = bob.push().await;
    match &entry.body {
        Some(Body::Message(m)) => {
            assert_eq!(m.kind, pb::ConversationKind::System as i32);
            assert_eq!(m.sender, "system");
            assert_eq!(m.body, "your order shipped".as_bytes());
        }
        other => panic!("{other:?}"),
    }
    let again: serde_json::Value = http
        .post(s.http("/v1/messages"))
        .header("authorization", bearer())
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["duplicate"], true,
        "the idempotency key works over HTTP too"
    );
    assert_eq!(again["server_msg_id"], r["server_msg_id"]);

    let bad = http
        .post(s.http("/v1/messages"))
        .header("authorization", bearer())
        .json(&serde_json::json!({"to": "bob", "text": "x".repeat(70_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<serde_json::Value>().await.unwrap()["error"],
        "MESSAGE_TOO_LARGE"
    );

    let p: serde_json::Value = http
        .get(s.http("/v1/users/bob/presence"))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(p["online"], true);
    assert_eq!(p["sessions"][0]["device"], "phone");

    let k: serde_json::Value = http
        .post(s.http("/v1/users/bob/kick"))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(k["kicked"], 1);
    let kick = bob.recv_until(|f| matches!(f, Frame::Kickout(_))).await;
    assert!(matches!(kick, Frame::Kickout(k) if k.reason == pb::KickReason::Admin as i32));

    let token: serde_json::Value = http
        .post(s.http("/v1/dev/token"))
        .header("authorization", bearer())
        .json(&serde_json::json!({"user": "dave"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let login = pb::Login {
        user_id: "dave".into(),
        token: token["token"].as_str().unwrap().into(),
        device_id: "d".into(),
        platform: 1,
        client_version: "1".into(),
        inbox_cursor: 0,
    };
    assert_eq!(
        TestClient::login_with(s.addr(), s.cert(), login)
            .await
            .1
            .code,
        0
    );

    let health = http.get(s.http("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = tern_testkit::server::metrics(&s.handle).await;
    for name in [
        "tern_logins_total",
        "tern_messages_stored_total",
        "tern_store_commit_seconds_bucket",
        "tern_sessions",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
}

/// Bytes per frame kind (issue 17): every frame a session receives and sends is counted
/// by kind and direction with its whole encoded size, the numbers `tern-bench wire`
/// splits a message's bytes by. (The metrics recorder is shared by the tests of this
/// binary, which run at once: growth is checked as at least what this test caused.)
#[tokio::test]
async fn frames_are_counted_by_kind_and_direction_with_their_bytes() {
    let s = TestServer::start(|_| {}).await;
    let mut bob = s.login("bob", "phone").await;
    let mut alice = s.login("alice", "phone").await;
    let sample = |page: &str, kind: &str, dir: &str, metric: &str| -> f64 {
        let prefix = format!("{metric}{{");
        page.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter(|l| {
                l.contains(&format!("kind=\"{kind}\""))
                    && l.contains(&format!("direction=\"{dir}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let before = tern_testkit::server::metrics(&s.handle).await;
    let mut chat_bytes = 0;
    for i in 0..5 {
        let frame = chat_frame(
            tern_protocol::ClientMsgId::generate(1, &mut rand::rng()),
            "alice",
            &format!("counted {i}"),
        );
        chat_bytes += frame.encoded_len();
        bob.send(frame).await;
        assert_eq!(bob.send_result().await.code, 0);
        alice.push().await;
    }
    let after = tern_testkit::server::metrics(&s.handle).await;
    let grew =
        |kind, dir, metric| sample(&after, kind, dir, metric) - sample(&before, kind, dir, metric);
    assert!(grew("Chat", "in", "tern_frames_total") >= 5.0);
    assert!(grew("Chat", "in", "tern_frame_bytes_total") >= chat_bytes as f64);
    assert!(grew("SendResult", "out", "tern_frames_total") >= 5.0);
    assert!(grew("Push", "out", "tern_frames_total") >= 5.0);
    assert!(grew("Push", "out", "tern_frame_bytes_total") > 5.0 * 40.0);
}

/// On a clean path a send's result datagram carries that result alone (issue 17): the
/// two results before it rode along in every one and were 66 of a message's 565 bytes;
/// they are repeated only while the path is measured lossy.
#[tokio::test]
async fn a_clean_path_gets_each_send_result_once() {
    let s = TestServer::start(|_| {}).await;
    let mut bob = s.login("bob", "phone").await;
    let _alice = s.login("alice", "phone").await;
    for i in 0..5 {
        let frame = chat_frame(
            tern_protocol::ClientMsgId::generate(1, &mut rand::rng()),
            "alice",
            &format!("datagram {i}"),
        );
        bob.conn.send_datagram(frame.to_bytes(0)).unwrap();
        assert_eq!(bob.send_result().await.code, 0);
    }
    let mut extra = 0;
    while let Ok(Some(f)) = bob.recv_within(Duration::from_millis(300)).await {
        if matches!(f, Frame::SendResult(_)) {
            extra += 1;
        }
    }
    assert_eq!(extra, 0, "send results repeated on a clean path");
}

#[tokio::test]
async fn graceful_shutdown_tells_sessions_to_reconnect_elsewhere() {
    let s = TestServer::start(|_| {}).await;
    let mut bob = s.login("bob", "phone").await;
    let shutdown = tokio::spawn(s.handle.shutdown());
    match bob.recv().await {
        Some(Frame::Kickout(k)) => assert_eq!(k.reason, pb::KickReason::ServerShutdown as i32),
        other => panic!("{other:?}"),
    }
    shutdown.await.unwrap();
}
