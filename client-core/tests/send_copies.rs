//! Second copies of sends on a lossy path (`tern_protocol::redundancy`), in the sans-IO
//! sync machine in virtual time: on a path measured lossy each send datagram goes twice,
//! the copy a little later; on a clean path, once; an answer that arrived first cancels
//! the copy.

use std::time::{Duration, Instant};

use tern_client::store::Db;
use tern_client::sync::{LoginInfo, SyncConfig, SyncMachine};
use tern_client::types::ConversationKind;
use tern_protocol::frame::{FLAG_RETRANSMIT, Frame};
use tern_protocol::qos::QosConfig;
use tern_protocol::redundancy::PathSample;
use tern_protocol::{ClientMsgId, ErrorCode, pb};

fn machine(t0: Instant, db: &mut Db) -> SyncMachine {
    let config = SyncConfig {
        qos: QosConfig::uplink(),
        gap_wait: Duration::from_millis(300),
        sync_page: 200,
        full_history_sync: true,
        datagram_sends: true,
    };
    let mut sync = SyncMachine::new(config, t0);
    let login = LoginInfo {
        head: 0,
        next_send_seq: 1,
        send_rate_per_sec: 50,
        send_burst: 200,
        store_generation: 1,
        restored_seq: 0,
    };
    sync.on_connected(login, t0, db).unwrap();
    while sync.poll_transmit().is_some() {}
    sync
}

/// Feeds the machine a roomy path's cumulative counts, `secs` into the test.
fn path(sync: &mut SyncMachine, t0: Instant, secs: u64, sent: u64, lost: u64) {
    let sample = PathSample {
        sent,
        lost,
        bytes: sent * 20,
        cwnd: 120_000,
        rtt: Duration::from_millis(100),
    };
    sync.on_path_sample(sample, t0 + Duration::from_secs(secs));
}

/// The `Chat` transmits queued now: (send seq, flags).
fn chats(sync: &mut SyncMachine) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    while let Some(t) = sync.poll_transmit() {
        if let Frame::Chat(c) = t.frame {
            out.push((c.send_seq, t.flags));
        }
    }
    out
}

fn send(sync: &mut SyncMachine, db: &mut Db, now: Instant, n: u8) -> ClientMsgId {
    let id = ClientMsgId([n; 16]);
    db.enqueue(id, "bob", ConversationKind::Direct, 0, b"hi", 1)
        .unwrap();
    sync.flush(now, db).unwrap();
    id
}

/// Runs the machine's timers up to `until`.
fn run_until(sync: &mut SyncMachine, db: &mut Db, until: Instant) -> Vec<(u64, u8)> {
    let mut out = Vec::new();
    while let Some(t) = sync.poll_timeout().filter(|t| *t <= until) {
        sync.handle_timeout(t, db).unwrap();
        out.extend(chats(sync));
    }
    out
}

#[test]
fn on_a_lossy_path_each_send_goes_twice_and_on_a_clean_one_once() {
    let t0 = Instant::now();
    let mut db = Db::open_in_memory("alice").unwrap();
    let mut sync = machine(t0, &mut db);
    path(&mut sync, t0, 0, 0, 0);
    path(&mut sync, t0, 1, 200, 1);
    assert!(!sync.sends_copied());
    send(&mut sync, &mut db, t0, 1);
    assert_eq!(chats(&mut sync), vec![(1, 0)]);
    // Before the retransmission timer (100 ms floor): nothing more on a clean path.
    assert_eq!(
        run_until(&mut sync, &mut db, t0 + Duration::from_millis(60)),
        vec![]
    );

    // The path turns lossy (30 %).
    path(&mut sync, t0, 2, 300, 31);
    path(&mut sync, t0, 3, 400, 61);
    assert!(sync.sends_copied());
    let t1 = t0 + Duration::from_millis(60);
    send(&mut sync, &mut db, t1, 2);
    assert_eq!(chats(&mut sync), vec![(2, 0)]);
    // The copy follows within 50 ms, marked as a copy, and only one.
    let copies = run_until(&mut sync, &mut db, t1 + Duration::from_millis(50));
    assert_eq!(copies, vec![(2, FLAG_RETRANSMIT)], "one copy of send 2");
}

#[test]
fn an_answer_before_the_copy_is_due_cancels_it() {
    let t0 = Instant::now();
    let mut db = Db::open_in_memory("alice").unwrap();
    let mut sync = machine(t0, &mut db);
    path(&mut sync, t0, 0, 0, 0);
    path(&mut sync, t0, 1, 100, 50);
    assert!(sync.sends_copied());
    let id = send(&mut sync, &mut db, t0, 1);
    assert_eq!(chats(&mut sync), vec![(1, 0)]);
    let answer = Frame::SendResult(pb::SendResult {
        client_msg_id: bytes::Bytes::copy_from_slice(&id.0),
        code: ErrorCode::Ok as i32,
        server_msg_id: 1,
        seq: 1,
        server_ts_ms: 1,
        ..Default::default()
    });
    sync.handle_frame(answer, t0 + Duration::from_millis(5), &mut db)
        .unwrap();
    assert_eq!(
        run_until(&mut sync, &mut db, t0 + Duration::from_secs(2)),
        vec![]
    );
}
