//! Durability: `kill -9` of the server process in the middle of a stream of sends
//! loses no acknowledged message, and resending after the restart creates no duplicate.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use tern_protocol::frame::Frame;
use tern_protocol::pb::timeline_entry::Body;
use tern_protocol::{ClientMsgId, pb};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_no_acknowledged_message() {
    const TOTAL: usize = 3000;
    const KILL_AFTER: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(dir.path(), "127.0.0.1:0");

    let (mut alice, r) = TestClient::login(
        server.addr,
        server.cert.clone(),
        "alice",
        "phone",
        pb::Platform::Android,
    )
    .await;
    assert_eq!(r.code, 0);
    let ids: Vec<ClientMsgId> = (0..TOTAL)
        .map(|i| ClientMsgId::generate(1_700_000_000_000 + i as u64, &mut rand::rng()))
        .collect();
    let frames: Vec<u8> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| {
            chat_frame(*id, "bob", &format!("m{i}"))
                .to_bytes(0)
                .to_vec()
        })
        .collect();
    // Hand the whole stream to QUIC without waiting for results.
    alice.send_raw(&frames).await;
    let mut acked: HashMap<ClientMsgId, (u64, u64)> = HashMap::new();
    let mut killed = false;
    loop {
        // After the kill nothing more can come; QUIC only notices at its idle timeout.
        let wait = if killed { Duration::from_secs(2) } else { WAIT };
        match alice.recv_within(wait).await {
            Ok(Some(Frame::SendResult(r))) => {
                assert_eq!(r.code, 0, "{r:?}");
                acked.insert(
                    ClientMsgId::from_slice(&r.client_msg_id).unwrap(),
                    (r.server_msg_id, r.seq),
                );
                if acked.len() == KILL_AFTER && !killed {
                    server.child.kill().expect("SIGKILL"); // std's kill is SIGKILL on unix
                    killed = true;
                }
            }
            Ok(Some(_)) => {}
            _ => break, // the connection died with the process
        }
    }
    assert!(killed);
    assert!(
        acked.len() >= KILL_AFTER && acked.len() < TOTAL,
        "killed mid-stream: {} acknowledged",
        acked.len()
    );
    server.child.wait().unwrap();
    drop(alice);

    // Restart on the same data directory.
    let mut server = spawn_server(dir.path(), "127.0.0.1:0");
    let (mut bob, r) = TestClient::login(
        server.addr,
        server.cert.clone(),
        "bob",
        "phone",
        pb::Platform::Ios,
    )
    .await;
    assert_eq!(r.code, 0);
    let stored_before = r.inbox_head_seq as usize;
    let bob_ids = sync_all(&mut bob).await;
    assert_eq!(bob_ids.len(), stored_before);
    let distinct: HashSet<_> = bob_ids.iter().collect();
    assert_eq!(distinct.len(), bob_ids.len(), "no duplicate in bob's inbox");
    for id in acked.keys() {
        assert!(distinct.contains(id), "acknowledged message {id} was lost");
    }

    // Alice resends everything with the same ids (as a client's outbox would).
    let (mut alice, _) = TestClient::login(
        server.addr,
        server.cert.clone(),
        "alice",
        "phone",
        pb::Platform::Android,
    )
    .await;
    let all: Vec<u8> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| {
            chat_frame(*id, "bob", &format!("m{i}"))
                .to_bytes(0)
                .to_vec()
        })
        .collect();
    alice.send_raw(&all).await;
    for _ in 0..TOTAL {
        let r = alice.send_result().await;
        assert_eq!(r.code, 0);
        let id = ClientMsgId::from_slice(&r.client_msg_id).unwrap();
        if let Some(first) = acked.get(&id) {
            assert_eq!(
                *first,
                (r.server_msg_id, r.seq),
                "a resend returns the original result"
            );
        }
    }
    let (mut bob, r) = TestClient::login(
        server.addr,
        server.cert.clone(),
        "bob",
        "tablet",
        pb::Platform::Desktop,
    )
    .await;
    assert_eq!(
        r.inbox_head_seq as usize, TOTAL,
        "exactly {TOTAL} entries, none twice"
    );
    let bob_ids = sync_all(&mut bob).await;
    let distinct: HashSet<_> = bob_ids.iter().collect();
    assert_eq!((bob_ids.len(), distinct.len()), (TOTAL, TOTAL));
    println!(
        "killed after {} acknowledgements; {} were stored before the kill; all {TOTAL} present once after resend",
        acked.len(),
        stored_before
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}

async fn sync_all(c: &mut TestClient) -> Vec<ClientMsgId> {
    let mut cursor = 0;
    let mut ids = vec![];
    loop {
        c.send(Frame::SyncRequest(pb::SyncRequest {
            request_id: cursor,
            after_seq: cursor,
            until_seq: 0,
            limit: 500,
            ..Default::default()
        }))
        .await;
        let page = match c.recv_until(|f| matches!(f, Frame::SyncResponse(_))).await {
            Frame::SyncResponse(p) => p,
            _ => unreachable!(),
        };
        for e in page.entries {
            assert_eq!(e.seq, cursor + 1, "contiguous");
            cursor = e.seq;
            if let Some(Body::Message(m)) = e.body {
                ids.push(ClientMsgId::from_slice(&m.client_msg_id).unwrap());
            }
        }
        if !page.more {
            return ids;
        }
    }
}
