//! One session logic for every transport (issue 16): a session over TLS over TCP (the
//! fallback where UDP is blocked) or WebSocket over TLS chats, syncs, is kicked out and
//! has multi-device timelines exactly like one over QUIC, and they meet in the same
//! conversations. Each scenario runs once per byte-stream transport, with raw protocol
//! clients against a real server.

mod common;

use std::time::Duration;

use common::*;
use tern_protocol::frame::{Frame, FrameKind};
use tern_protocol::pb;
use tern_testkit::tcp::{StreamKind, TcpTestClient};

const KINDS: [StreamKind; 2] = [StreamKind::Tcp, StreamKind::Ws];

fn addr_of(s: &TestServer, kind: StreamKind) -> std::net::SocketAddr {
    match kind {
        StreamKind::Tcp => s.tcp_addr(),
        StreamKind::Ws => s.ws_addr(),
    }
}

async fn stream_login(
    s: &TestServer,
    kind: StreamKind,
    user: &str,
    device: &str,
    p: pb::Platform,
) -> TcpTestClient {
    let (c, r) = TcpTestClient::login_kind(kind, addr_of(s, kind), s.cert(), user, device, p).await;
    assert_eq!(r.code, 0, "{kind:?}: {r:?}");
    c
}

#[tokio::test]
async fn a_stream_session_chats_with_a_quic_session_both_ways() {
    for kind in KINDS {
        a_stream_session_chats_with_a_quic_session_both_ways_over(kind).await;
    }
}

async fn a_stream_session_chats_with_a_quic_session_both_ways_over(kind: StreamKind) {
    let s = TestServer::start(|_| {}).await;
    let mut alice = stream_login(&s, kind, "alice", "laptop", pb::Platform::Desktop).await;
    let mut bob = s.login("bob", "phone").await;
    for i in 0..5 {
        alice.chat("bob", &format!("over tcp {i}")).await;
        assert_eq!(alice.send_result().await.code, 0);
    }
    for i in 0..5 {
        let e = bob.push().await;
        assert_eq!(text_of(&e), format!("over tcp {i}"));
        bob.send(Frame::DeliveryAck(pb::DeliveryAck {
            cumulative_seq: e.seq,
            ..Default::default()
        }))
        .await;
    }
    for i in 0..5 {
        bob.chat("alice", &format!("over quic {i}")).await;
        assert_eq!(bob.send_result().await.code, 0);
    }
    // Alice's timeline has her own sends, then delivered receipts and Bob's messages.
    let mut texts = vec![];
    while texts.len() < 5 {
        let e = alice.push().await;
        if matches!(e.body, Some(pb::timeline_entry::Body::Message(_))) {
            let t = text_of(&e);
            if t.starts_with("over quic") {
                texts.push(t);
            }
        }
        alice
            .send(Frame::DeliveryAck(pb::DeliveryAck {
                cumulative_seq: e.seq,
                ..Default::default()
            }))
            .await;
    }
    let want: Vec<String> = (0..5).map(|i| format!("over quic {i}")).collect();
    assert_eq!(texts, want);
    // A sync over TCP returns the same timeline.
    alice
        .send(Frame::SyncRequest(pb::SyncRequest {
            request_id: 1,
            ..Default::default()
        }))
        .await;
    match alice
        .recv_until(|f| matches!(f, Frame::SyncResponse(_)))
        .await
    {
        Frame::SyncResponse(p) => {
            let seqs: Vec<u64> = p.entries.iter().map(|e| e.seq).collect();
            assert!(!seqs.is_empty());
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        }
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn kickout_works_across_transports() {
    for kind in KINDS {
        kickout_works_across_transports_over(kind).await;
    }
}

async fn kickout_works_across_transports_over(kind: StreamKind) {
    let s = TestServer::start(|_| {}).await;
    // Same platform, QUIC first, then TCP: the QUIC session is told.
    let mut quic = s.login("alice", "phone").await;
    let mut tcp = stream_login(&s, kind, "alice", "phone2", pb::Platform::Android).await;
    match quic.recv_until(|f| matches!(f, Frame::Kickout(_))).await {
        Frame::Kickout(k) => assert_eq!(k.reason, pb::KickReason::LoginElsewhere as i32),
        _ => unreachable!(),
    }
    // And the other way round.
    let _again = s.login("alice", "phone3").await;
    match tcp.recv_until(|f| matches!(f, Frame::Kickout(_))).await {
        Frame::Kickout(k) => assert_eq!(k.reason, pb::KickReason::LoginElsewhere as i32),
        _ => unreachable!(),
    }
    assert!(
        tcp.recv().await.is_none(),
        "the TCP session is closed after the kickout"
    );
}

#[tokio::test]
async fn two_devices_on_two_transports_see_one_timeline() {
    for kind in KINDS {
        two_devices_on_two_transports_see_one_timeline_over(kind).await;
    }
}

async fn two_devices_on_two_transports_see_one_timeline_over(kind: StreamKind) {
    let s = TestServer::start(|_| {}).await;
    let mut on_quic = s.login("alice", "phone").await;
    let mut on_tcp = stream_login(&s, kind, "alice", "laptop", pb::Platform::Desktop).await;
    let mut bob = s.login("bob", "phone").await;
    for i in 0..3 {
        bob.chat("alice", &format!("m{i}")).await;
        assert_eq!(bob.send_result().await.code, 0);
    }
    let mut a = vec![];
    let mut b = vec![];
    for _ in 0..3 {
        let e = on_quic.push().await;
        a.push((e.seq, text_of(&e)));
        let e = on_tcp.push().await;
        b.push((e.seq, text_of(&e)));
    }
    assert_eq!(a, b, "the same entries at the same seqs");
}

#[tokio::test]
async fn pushes_over_a_stream_are_not_resent_within_the_connection() {
    for kind in KINDS {
        pushes_over_a_stream_are_not_resent_within_the_connection_over(kind).await;
    }
}

async fn pushes_over_a_stream_are_not_resent_within_the_connection_over(kind: StreamKind) {
    let s = TestServer::start(|_| {}).await;
    let mut alice = stream_login(&s, kind, "alice", "laptop", pb::Platform::Desktop).await;
    let mut bob = s.login("bob", "phone").await;
    bob.chat("alice", "once").await;
    assert_eq!(bob.send_result().await.code, 0);
    let first = alice.push().await;
    // No ACK: over QUIC the push would be retransmitted within a second or two.
    let again = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(Frame::Push(p)) = alice.recv().await {
                return p;
            }
        }
    })
    .await;
    assert!(
        again.is_err(),
        "a push over TCP was resent: {again:?} after {first:?}"
    );
}

#[tokio::test]
async fn bad_input_over_a_stream_ends_only_that_connection() {
    for kind in KINDS {
        bad_input_over_a_stream_ends_only_that_connection_over(kind).await;
    }
}

async fn bad_input_over_a_stream_ends_only_that_connection_over(kind: StreamKind) {
    let s = TestServer::start(|_| {}).await;
    let mut alice = stream_login(&s, kind, "alice", "laptop", pb::Platform::Desktop).await;
    let mut bob = s.login("bob", "phone").await;
    // Before login: anything but Login.
    let mut m = TcpTestClient::connect_kind(kind, addr_of(&s, kind), s.cert()).await;
    m.send(Frame::Heartbeat(pb::Heartbeat {
        interval_ms: 1,
        ..Default::default()
    }))
    .await;
    match m.recv().await {
        Some(Frame::Error(e)) => assert_eq!(e.code, pb::ErrorCode::UnexpectedFrame as i32),
        other => panic!("{other:?}"),
    }
    assert!(m.recv().await.is_none());
    // After login: a Chat whose body is not protobuf.
    let (mut m, _) = TcpTestClient::login_kind(
        kind,
        addr_of(&s, kind),
        s.cert(),
        "mallory",
        "x",
        pb::Platform::Web,
    )
    .await;
    m.send_raw(&[1, FrameKind::Chat as u8, 0, 3, 0xff, 0xff, 0xff])
        .await;
    match m.recv().await {
        Some(Frame::Error(e)) => assert_eq!(e.code, pb::ErrorCode::MalformedFrame as i32),
        other => panic!("{other:?}"),
    }
    assert!(m.recv().await.is_none(), "closed after the bad frame");
    // Everyone else still chats.
    alice.chat("bob", "still here").await;
    assert_eq!(alice.send_result().await.code, 0);
    assert_eq!(text_of(&bob.push().await), "still here");
}
