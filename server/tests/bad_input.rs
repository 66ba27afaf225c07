//! Bad input: each gets its error code and a log line, the offending session ends if it
//! must, and everyone else keeps being served.

mod common;

use common::*;
use tern_protocol::frame::{Frame, FrameKind};
use tern_protocol::pb;

/// Alice and Bob chat while the test abuses the server from another connection.
async fn still_serving(s: &TestServer, alice: &mut TestClient, bob: &mut TestClient, text: &str) {
    alice.chat("bob", text).await;
    assert_eq!(alice.send_result().await.code, 0);
    let e = loop {
        let e = bob.push().await;
        if text_of(&e) == text {
            break e;
        }
    };
    bob.send(Frame::DeliveryAck(pb::DeliveryAck {
        cumulative_seq: e.seq,
        seqs: vec![],
        ..Default::default()
    }))
    .await;
    assert!(s.handle.shared.registry.len() >= 2);
}

fn error_code(f: Option<Frame>) -> i32 {
    match f {
        Some(Frame::Error(e)) => e.code,
        other => panic!("expected an Error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_unknown_and_oversized_frames_end_only_the_offender() {
    let s = TestServer::start(|_| {}).await;
    let mut alice = s.login("alice", "phone").await;
    let mut bob = s.login("bob", "phone").await;

    // A Chat whose body is not protobuf.
    let mut m = s.login("mallory", "phone").await;
    m.send_raw(&[1, FrameKind::Chat as u8, 0, 3, 0xff, 0xff, 0xff])
        .await;
    assert_eq!(
        error_code(m.recv().await),
        pb::ErrorCode::MalformedFrame as i32
    );
    m.closed().await;
    still_serving(&s, &mut alice, &mut bob, "after malformed").await;

    // An unknown wire version, before login: the answer is readable by an old client.
    let mut m = TestClient::connect(s.addr(), s.cert()).await;
    m.send_raw(&[9, 1, 0, 0]).await;
    assert_eq!(
        error_code(m.recv().await),
        pb::ErrorCode::UnsupportedVersion as i32
    );
    m.closed().await;

    // An unknown frame kind after login.
    let mut m = s.login("mallory", "phone").await;
    m.send_raw(&[1, 0x66, 0, 0]).await;
    assert_eq!(
        error_code(m.recv().await),
        pb::ErrorCode::UnknownFrameKind as i32
    );
    m.closed().await;

    // A frame announcing 100 MiB: refused from its prefix.
    let mut m = s.login("mallory", "phone").await;
    let mut prefix = vec![1u8, FrameKind::Chat as u8, 0];
    prost::encoding::encode_varint(100 << 20, &mut prefix);
    m.send_raw(&prefix).await;
    assert_eq!(
        error_code(m.recv().await),
        pb::ErrorCode::FrameTooLarge as i32
    );
    m.closed().await;

    // A frame only the server may send.
    let mut m = s.login("mallory", "phone").await;
    m.send(Frame::Push(pb::Push::default())).await;
    assert_eq!(
        error_code(m.recv().await),
        pb::ErrorCode::UnexpectedFrame as i32
    );
    m.closed().await;

    // Random garbage as the very first bytes.
    let mut m = TestClient::connect(s.addr(), s.cert()).await;
    m.send_raw(b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(matches!(m.recv().await, Some(Frame::Error(_))));
    m.closed().await;

    still_serving(&s, &mut alice, &mut bob, "after all of it").await;
}

#[tokio::test]
async fn invalid_messages_get_per_message_codes_and_the_session_lives_on() {
    let s = TestServer::start(|c| c.max_body_bytes = 1000).await;
    let mut alice = s.login("alice", "phone").await;
    let id = || tern_protocol::ClientMsgId::generate(1, &mut rand::rng());

    let big = chat_frame(id(), "bob", &"x".repeat(1001));
    alice.send(big).await;
    assert_eq!(
        alice.send_result().await.code,
        pb::ErrorCode::MessageTooLarge as i32
    );

    let Frame::Chat(mut spoof) = chat_frame(id(), "bob", "i am bob") else {
        unreachable!()
    };
    spoof.sender = "carol".into();
    alice.send(Frame::Chat(spoof)).await;
    assert_eq!(
        alice.send_result().await.code,
        pb::ErrorCode::NotAllowed as i32,
        "nobody sends as someone else"
    );

    let Frame::Chat(mut short_id) = chat_frame(id(), "bob", "x") else {
        unreachable!()
    };
    short_id.client_msg_id = vec![1, 2, 3].into();
    alice.send(Frame::Chat(short_id)).await;
    assert_eq!(
        alice.send_result().await.code,
        pb::ErrorCode::InvalidArgument as i32
    );

    alice.send(chat_frame(id(), "not a valid id!", "x")).await;
    assert_eq!(
        alice.send_result().await.code,
        pb::ErrorCode::RecipientNotFound as i32
    );

    let Frame::Chat(mut system) = chat_frame(id(), "bob", "x") else {
        unreachable!()
    };
    system.kind = pb::ConversationKind::System as i32;
    alice.send(Frame::Chat(system)).await;
    assert_eq!(
        alice.send_result().await.code,
        pb::ErrorCode::NotAllowed as i32,
        "SYSTEM is for the backend API"
    );

    alice.chat("bob", "still fine").await;
    assert_eq!(alice.send_result().await.code, 0);
}

#[tokio::test]
async fn unknown_recipients_are_refused_when_required() {
    let s = TestServer::start(|c| c.require_known_recipient = true).await;
    let mut alice = s.login("alice", "phone").await;
    alice.chat("nobody", "hello?").await;
    assert_eq!(
        alice.send_result().await.code,
        pb::ErrorCode::RecipientNotFound as i32
    );
    let _bob = s.login("bob", "phone").await;
    alice.chat("bob", "hello").await;
    assert_eq!(alice.send_result().await.code, 0);
}

#[tokio::test]
async fn a_flood_is_rate_limited_then_disconnected() {
    let s = TestServer::start(|c| {
        c.rate_per_sec = 20;
        c.rate_burst = 10;
    })
    .await;
    let mut alice = s.login("alice", "phone").await;
    let mut bob = s.login("bob", "phone").await;
    let mut m = s.login("mallory", "phone").await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        let id = tern_protocol::ClientMsgId::generate(1, &mut rand::rng());
        flood.extend_from_slice(&chat_frame(id, "bob", "spam").to_bytes(0));
    }
    m.send_raw(&flood).await;
    let (mut ok, mut limited) = (0, 0);
    let mut closed_with_error = false;
    while let Some(f) = m.recv().await {
        match f {
            Frame::SendResult(r) if r.code == 0 => ok += 1,
            Frame::SendResult(r) if r.code == pb::ErrorCode::RateLimited as i32 => limited += 1,
            Frame::Error(e) if e.code == pb::ErrorCode::RateLimited as i32 => {
                closed_with_error = true
            }
            Frame::Push(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((10..=12).contains(&ok), "about a burst got through: {ok}");
    assert!(limited >= 1, "refusals were sent");
    assert!(
        closed_with_error,
        "the flooding session was closed with RATE_LIMITED"
    );
    still_serving(&s, &mut alice, &mut bob, "after the flood").await;
}

#[tokio::test]
async fn a_login_storm_is_answered_and_limits_give_server_busy() {
    let s = TestServer::start(|c| c.max_sessions = 30).await;
    let mut handles = vec![];
    for i in 0..60 {
        let (addr, cert) = (s.addr(), s.cert());
        handles.push(tokio::spawn(async move {
            let (c, r) =
                TestClient::login(addr, cert, &format!("user{i}"), "d", pb::Platform::Android)
                    .await;
            (c, r.code)
        }));
    }
    let mut clients = vec![];
    let (mut ok, mut busy) = (0, 0);
    for h in handles {
        let (c, code) = h.await.unwrap();
        match pb::ErrorCode::try_from(code).unwrap() {
            pb::ErrorCode::Ok => ok += 1,
            pb::ErrorCode::ServerBusy => busy += 1,
            other => panic!("unexpected login result {other:?}"),
        }
        clients.push(c);
    }
    assert_eq!(ok + busy, 60, "every login got an answer");
    assert!(
        (25..=30).contains(&ok),
        "the session limit held: {ok} ok, {busy} busy"
    );
    assert_eq!(s.handle.shared.registry.len(), ok);
}
