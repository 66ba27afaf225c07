//! Groups through the HTTP API and the protocol, refusals, and the offline push for a
//! session that is online but does not acknowledge (an app the OS has suspended). Each
//! scenario runs on every transport (QUIC, TLS over TCP, WebSocket): one session logic.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use tern_protocol::frame::Frame;
use tern_protocol::pb;
use tern_testkit::any::{AnyClient, Wire};

fn group_chat(to: &str, text: &str, n: u8) -> Frame {
    Frame::Chat(pb::ChatMessage {
        client_msg_id: vec![n; 16].into(),
        recipient: to.into(),
        kind: pb::ConversationKind::Group as i32,
        body: text.as_bytes().to_vec().into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_through_the_http_api_and_the_protocol() {
    for wire in Wire::ALL {
        groups_through_the_http_api_and_the_protocol_over(wire).await;
    }
}

async fn groups_through_the_http_api_and_the_protocol_over(wire: Wire) {
    let s = TestServer::start(|c| c.max_group_members = 4).await;
    let http = api();
    let post = |path: &str, body: serde_json::Value| {
        http.post(s.http(path))
            .header("authorization", bearer())
            .json(&body)
            .send()
    };
    let created: serde_json::Value = post(
        "/v1/groups",
        json!({"name": "ops", "members": ["alice", "bob"]}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let gid = created["group"].as_str().unwrap().to_owned();
    assert_eq!(created["owner"], "alice");
    assert_eq!(created["members"], json!(["alice", "bob"]));

    let mut bob = s.login_over(wire, "bob", "b").await;
    let mut alice = s.login_over(wire, "alice", "a").await;
    // The backend announces into the group; it is not a member and need not be.
    let r = post(
        "/v1/messages",
        json!({"to": gid, "group": true, "from": "ops-bot", "text": "deploy at 5"}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let entry = bob.push().await;
    assert_eq!(text_of(&entry), "deploy at 5");
    match &entry.body {
        Some(pb::timeline_entry::Body::Message(m)) => {
            assert_eq!((m.kind, m.recipient.as_str()), (1, gid.as_str()))
        }
        other => panic!("{other:?}"),
    }

    // Members send; outsiders are refused per send.
    alice.send(group_chat(&gid, "hi team", 1)).await;
    assert_eq!(alice.send_result().await.code, pb::ErrorCode::Ok as i32);
    assert_eq!(text_of(&bob.push().await), "hi team");
    let mut eve = s.login_over(wire, "eve", "e").await;
    eve.send(group_chat(&gid, "let me in", 2)).await;
    assert_eq!(
        eve.send_result().await.code,
        pb::ErrorCode::NotAllowed as i32
    );
    eve.send(group_chat("gnope", "anyone?", 3)).await;
    assert_eq!(
        eve.send_result().await.code,
        pb::ErrorCode::GroupNotFound as i32
    );

    // Add over the limit, then within it; remove; info; the user's groups.
    let r = post(
        &format!("/v1/groups/{gid}/members"),
        json!({"members": ["c1", "c2", "c3"]}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["error"],
        "GROUP_FULL"
    );
    let r = post(
        &format!("/v1/groups/{gid}/members"),
        json!({"members": ["eve"]}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    eve.send(group_chat(&gid, "thanks", 4)).await;
    assert_eq!(eve.send_result().await.code, pb::ErrorCode::Ok as i32);
    let r = post(
        &format!("/v1/groups/{gid}/members/remove"),
        json!({"members": ["eve"]}),
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    eve.send(group_chat(&gid, "still?", 5)).await;
    assert_eq!(
        eve.send_result().await.code,
        pb::ErrorCode::NotAllowed as i32
    );
    let info: serde_json::Value = http
        .get(s.http(&format!("/v1/groups/{gid}")))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["members"], json!(["alice", "bob"]));
    let left: serde_json::Value =
        post(&format!("/v1/groups/{gid}/leave"), json!({"user": "alice"}))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        (left["owner"].as_str(), left["members"].clone()),
        (Some("bob"), json!(["bob"]))
    );
    let r = http
        .get(s.http("/v1/groups/gmissing"))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let mine: serde_json::Value = http
        .get(s.http("/v1/users/bob/groups"))
        .header("authorization", bearer())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(mine["groups"][0]["group"], gid.as_str());

    // Protocol: a request without an operation, and info for a non-member.
    eve.send(Frame::GroupRequest(pb::GroupRequest {
        request_id: 9,
        op: None,
    }))
    .await;
    match eve
        .recv_until(|f| matches!(f, Frame::GroupResponse(_)))
        .await
    {
        Frame::GroupResponse(r) => {
            assert_eq!(
                (r.request_id, r.code),
                (9, pb::ErrorCode::InvalidArgument as i32)
            )
        }
        _ => unreachable!(),
    }
    eve.send(Frame::GroupRequest(pb::GroupRequest {
        request_id: 10,
        op: Some(pb::group_request::Op::Info(pb::group_request::Group {
            group: gid.clone(),
        })),
    }))
    .await;
    match eve
        .recv_until(|f| matches!(f, Frame::GroupResponse(_)))
        .await
    {
        Frame::GroupResponse(r) => {
            assert_eq!(r.code, pb::ErrorCode::NotAllowed as i32);
            assert!(r.groups.is_empty(), "no member list for outsiders");
        }
        _ => unreachable!(),
    }
    // History only ever reads the caller's own timeline.
    eve.send(Frame::HistoryRequest(pb::HistoryRequest {
        request_id: 11,
        kind: pb::ConversationKind::Direct as i32,
        conversation: "bob".into(),
        before_seq: 0,
        limit: 50,
    }))
    .await;
    match eve
        .recv_until(|f| matches!(f, Frame::HistoryResponse(_)))
        .await
    {
        Frame::HistoryResponse(r) => assert!(r.entries.is_empty()),
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_session_that_does_not_ack_gets_the_push_webhook_after_the_delay() {
    for wire in Wire::ALL {
        an_online_session_that_does_not_ack_gets_the_push_webhook_after_the_delay_over(wire).await;
    }
}

async fn an_online_session_that_does_not_ack_gets_the_push_webhook_after_the_delay_over(
    wire: Wire,
) {
    use axum::body::Bytes;
    use axum::extract::State;
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    async fn hook(State(got): State<Arc<Mutex<Vec<serde_json::Value>>>>, body: Bytes) {
        got.lock()
            .unwrap()
            .push(serde_json::from_slice(&body).unwrap());
    }
    let app = axum::Router::new()
        .route("/push", axum::routing::post(hook))
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let s = TestServer::start(|c| {
        c.push_webhook_url = Some(url);
        c.push_webhook_delay = Duration::from_millis(300);
    })
    .await;
    // bob is online but never acknowledges (the app is suspended).
    let mut bob = s.login_over(wire, "bob", "phone").await;
    bob.send(Frame::PushTokenRequest(pb::PushTokenRequest {
        request_id: 1,
        provider: "apns".into(),
        token: "tok-1".into(),
    }))
    .await;
    match bob.recv_until(|f| matches!(f, Frame::OpResult(_))).await {
        Frame::OpResult(r) => assert_eq!(r.code, pb::ErrorCode::Ok as i32),
        _ => unreachable!(),
    }
    let mut alice = s.login_over(wire, "alice", "a").await;
    alice.chat("bob", "are you there?").await;
    assert_eq!(alice.send_result().await.code, pb::ErrorCode::Ok as i32);
    let _ = bob.push().await; // arrives, but no DeliveryAck goes back
    let start = std::time::Instant::now();
    while got.lock().unwrap().is_empty() {
        assert!(start.elapsed() < WAIT, "no push webhook");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "not before the delay"
    );
    let push = got.lock().unwrap()[0].clone();
    assert_eq!(push["user"], "bob");
    assert_eq!(push["tokens"][0]["platform"], "ANDROID");
    assert_eq!(push["tokens"][0]["token"], "tok-1");
    assert_eq!(push["message"]["preview"], "are you there?");
}

async fn op_result(c: &mut AnyClient) -> pb::OpResult {
    match c.recv_until(|f| matches!(f, Frame::OpResult(_))).await {
        Frame::OpResult(r) => r,
        _ => unreachable!(),
    }
}

async fn group_response(c: &mut AnyClient) -> pb::GroupResponse {
    match c.recv_until(|f| matches!(f, Frame::GroupResponse(_))).await {
        Frame::GroupResponse(r) => r,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_code_and_the_session_goes_on() {
    for wire in Wire::ALL {
        bad_requests_get_a_code_and_the_session_goes_on_over(wire).await;
    }
}

async fn bad_requests_get_a_code_and_the_session_goes_on_over(wire: Wire) {
    let s = TestServer::start(|c| c.max_group_members = 10).await;
    let mut mallory = s.login_over(wire, "mallory", "m").await;
    // Read marks for a conversation that does not exist, far beyond the head: no-op.
    mallory
        .send(Frame::MarkRead(pb::MarkRead {
            request_id: 1,
            kind: pb::ConversationKind::Direct as i32,
            conversation: "nobody".into(),
            up_to_seq: u64::MAX,
        }))
        .await;
    assert_eq!(op_result(&mut mallory).await.code, pb::ErrorCode::Ok as i32);
    // Recalling what does not exist.
    mallory
        .send(Frame::RecallRequest(pb::RecallRequest {
            request_id: 2,
            server_msg_id: 987_654,
        }))
        .await;
    let r = op_result(&mut mallory).await;
    assert_eq!(
        (r.request_id, r.code),
        (2, pb::ErrorCode::MessageNotFound as i32)
    );
    // An oversized push token.
    mallory
        .send(Frame::PushTokenRequest(pb::PushTokenRequest {
            request_id: 3,
            provider: "apns".into(),
            token: "x".repeat(5000),
        }))
        .await;
    assert_eq!(
        op_result(&mut mallory).await.code,
        pb::ErrorCode::InvalidArgument as i32
    );
    // Groups: too many members, a bad member id, a huge name.
    let create = |id: u64, name: String, members: Vec<String>| {
        Frame::GroupRequest(pb::GroupRequest {
            request_id: id,
            op: Some(pb::group_request::Op::Create(pb::group_request::Create {
                name,
                members,
                large: false,
            })),
        })
    };
    let many: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    mallory.send(create(4, "big".into(), many)).await;
    assert_eq!(
        group_response(&mut mallory).await.code,
        pb::ErrorCode::GroupFull as i32
    );
    mallory
        .send(create(5, "bad".into(), vec!["not valid!".into()]))
        .await;
    assert_eq!(
        group_response(&mut mallory).await.code,
        pb::ErrorCode::InvalidArgument as i32
    );
    mallory.send(create(6, "n".repeat(1000), vec![])).await;
    assert_eq!(
        group_response(&mut mallory).await.code,
        pb::ErrorCode::InvalidArgument as i32
    );
    // A history page far too large is capped, not refused.
    mallory
        .send(Frame::HistoryRequest(pb::HistoryRequest {
            request_id: 7,
            kind: pb::ConversationKind::Group as i32,
            conversation: "g-none".into(),
            before_seq: 0,
            limit: u32::MAX,
        }))
        .await;
    match mallory
        .recv_until(|f| matches!(f, Frame::HistoryResponse(_)))
        .await
    {
        Frame::HistoryResponse(r) => {
            assert_eq!((r.code, r.entries.len(), r.more), (0, 0, false))
        }
        _ => unreachable!(),
    }
    // After all that, the session still works.
    mallory.chat("mallory", "note to self").await;
    assert_eq!(mallory.send_result().await.code, pb::ErrorCode::Ok as i32);
    // A server-to-client frame from a client ends its session with a code.
    mallory.send(Frame::OpResult(pb::OpResult::default())).await;
    assert_eq!(
        mallory.ended_with().await,
        Some(pb::ErrorCode::UnexpectedFrame as u32),
        "{wire:?}"
    );
    // Everyone else is unaffected.
    let mut bob = s.login_over(wire, "bob", "b").await;
    bob.chat("bob", "still serving").await;
    assert_eq!(bob.send_result().await.code, pb::ErrorCode::Ok as i32);
}
