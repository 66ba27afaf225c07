//! Sync pages in flight (issue 17): a catch-up keeps several pages requested at once,
//! and whatever order the server answers them in, whichever it cuts short and whichever
//! it fails, the device ends with the whole timeline, announced once each in seq order,
//! never more than [`PAGES_IN_FLIGHT`] pages asked for at a time, and no range asked for
//! twice unless its answer failed.
//!
//! The server here is a script over an in-memory timeline, answering the machine's
//! requests in an order proptest chooses (the real server answers a session's reads
//! concurrently, so their answers can overtake each other).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use tern_client::store::Db;
use tern_client::sync::{LoginInfo, PAGES_IN_FLIGHT, SyncConfig, SyncEvent, SyncMachine};
use tern_protocol::frame::Frame;
use tern_protocol::pb;
use tern_protocol::qos::QosConfig;

const PAGE: u32 = 40;

fn config() -> SyncConfig {
    SyncConfig {
        qos: QosConfig::uplink(),
        gap_wait: Duration::from_millis(300),
        sync_page: PAGE,
        full_history_sync: true,
        datagram_sends: true,
    }
}

fn entry(seq: u64) -> pb::TimelineEntry {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_le_bytes());
    pb::TimelineEntry {
        seq,
        body: Some(pb::timeline_entry::Body::Message(pb::StoredMessage {
            server_msg_id: seq,
            client_msg_id: id.to_vec().into(),
            sender: format!("friend{}", seq % 7),
            recipient: "bob".into(),
            body: format!("m{seq}").into_bytes().into(),
            server_ts_ms: 1_000 + seq,
            ..Default::default()
        })),
    }
}

/// How the script answers one request.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// Which of the requests waiting is answered next (modulo their number).
    pick: usize,
    /// At most this many entries (the server's byte budget cutting a page short).
    cut: u32,
    /// Answered with an error instead.
    fail: bool,
}

fn answers() -> impl Strategy<Value = Vec<Answer>> {
    proptest::collection::vec(
        (0usize..8, 1u32..=PAGE, proptest::bool::weighted(0.05))
            .prop_map(|(pick, cut, fail)| Answer { pick, cut, fail }),
        1..64,
    )
}

struct Outcome {
    announced: Vec<u64>,
    max_in_flight: usize,
    delivered: Vec<u32>,
    failures: usize,
}

/// Bob logs in with `head` entries waiting; the script answers with `script`, cycled,
/// its failures on the first pass only: a server that fails every answer forever never
/// lets a catch-up finish, so the script's failures are finite (a script of one failing
/// answer, cycled, once failed every request for the whole run).
fn catch_up(head: u64, script: &[Answer]) -> (Db, Outcome) {
    let t0 = Instant::now();
    let mut db = Db::open_in_memory("bob").unwrap();
    let mut sync = SyncMachine::new(config(), t0);
    let login = LoginInfo {
        head,
        next_send_seq: 1,
        send_rate_per_sec: 1_000,
        send_burst: 1_000,
        store_generation: 1,
        restored_seq: 0,
    };
    sync.on_connected(login, t0, &mut db).unwrap();
    let mut now = t0;
    let mut waiting: Vec<pb::SyncRequest> = Vec::new();
    let mut out = Outcome {
        announced: vec![],
        max_in_flight: 0,
        delivered: vec![0; head as usize + 1],
        failures: 0,
    };
    let mut step = 0usize;
    let end = t0 + Duration::from_secs(600);
    while now < end {
        while let Some(t) = sync.poll_transmit() {
            match t.frame {
                Frame::SyncRequest(r) if r.log.is_empty() => waiting.push(r),
                Frame::SummariesRequest(r) => {
                    let s = Frame::Summaries(pb::Summaries {
                        request_id: r.request_id,
                        head_seq: head,
                        ..Default::default()
                    });
                    sync.handle_frame(s, now, &mut db).unwrap();
                }
                _ => {}
            }
        }
        out.max_in_flight = out.max_in_flight.max(waiting.len());
        while let Some(ev) = sync.poll_event() {
            if let SyncEvent::Applied(a) = ev {
                out.announced
                    .extend(a.new_messages.iter().map(|m| m.seq.unwrap()));
            }
        }
        if waiting.is_empty() {
            if db.cursor().unwrap() == head {
                break;
            }
            now = sync
                .poll_timeout()
                .unwrap_or(now + Duration::from_secs(1))
                .max(now + Duration::from_millis(1));
            sync.handle_timeout(now, &mut db).unwrap();
            continue;
        }
        let mut a = script[step % script.len()];
        a.fail &= step < script.len();
        step += 1;
        let r = waiting.remove(a.pick % waiting.len());
        now += Duration::from_millis(5);
        let frame = if a.fail {
            out.failures += 1;
            Frame::error(tern_protocol::ErrorCode::ServerBusy, "busy", r.request_id)
        } else {
            let upper = if r.until_seq == 0 {
                head
            } else {
                r.until_seq.min(head)
            };
            let last = upper.min(r.after_seq + u64::from(r.limit.min(a.cut)));
            let entries: Vec<_> = (r.after_seq + 1..=last).map(entry).collect();
            for e in &entries {
                out.delivered[e.seq as usize] += 1;
            }
            Frame::SyncResponse(pb::SyncResponse {
                request_id: r.request_id,
                more: last < upper,
                entries,
                head_seq: head,
                log: String::new(),
            })
        };
        sync.handle_frame(frame, now, &mut db).unwrap();
    }
    (db, out)
}

#[test]
fn a_catch_up_keeps_several_pages_in_flight_and_asks_each_range_once() {
    let in_order = [Answer {
        pick: 0,
        cut: PAGE,
        fail: false,
    }];
    let (db, out) = catch_up(1_000, &in_order);
    assert_eq!(db.cursor().unwrap(), 1_000);
    assert_eq!(out.announced, (1..=1_000).collect::<Vec<_>>());
    assert_eq!(
        out.max_in_flight, PAGES_IN_FLIGHT,
        "pages are pipelined, up to the limit"
    );
    assert!(
        out.delivered[1..].iter().all(|&n| n == 1),
        "each entry downloaded once"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_answer_order_cut_or_failure_ends_with_the_whole_timeline_in_order(
        head in 1u64..400,
        script in answers(),
    ) {
        let (db, out) = catch_up(head, &script);
        prop_assert_eq!(db.cursor().unwrap(), head);
        prop_assert_eq!(&out.announced, &(1..=head).collect::<Vec<_>>(), "once each, in seq order");
        prop_assert!(out.max_in_flight <= PAGES_IN_FLIGHT, "{} pages in flight", out.max_in_flight);
        if out.failures == 0 {
            prop_assert!(
                out.delivered[1..].iter().all(|&n| n == 1),
                "an entry downloaded twice without a failure"
            );
        }
    }
}
