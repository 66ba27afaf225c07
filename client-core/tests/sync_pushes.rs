//! Pushes that arrive together (issue 17): the sync machine stores them in one
//! transaction and acknowledges them in one `DeliveryAck`, whatever their order and
//! whatever duplicates are among them, while a push that arrives alone is still
//! acknowledged at once. The device ends with every entry once, announced in seq order.

use std::time::Instant;

use proptest::prelude::*;
use tern_client::store::Db;
use tern_client::sync::{LoginInfo, MAX_PUSHES_TOGETHER, SyncConfig, SyncEvent, SyncMachine};
use tern_protocol::frame::Frame;
use tern_protocol::pb;
use tern_protocol::qos::QosConfig;

fn config() -> SyncConfig {
    SyncConfig {
        qos: QosConfig::uplink(),
        gap_wait: std::time::Duration::from_millis(300),
        sync_page: 40,
        full_history_sync: true,
        datagram_sends: true,
    }
}

fn push(seq: u64) -> Frame {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&seq.to_le_bytes());
    Frame::Push(pb::Push {
        entry: Some(pb::TimelineEntry {
            seq,
            body: Some(pb::timeline_entry::Body::Message(pb::StoredMessage {
                server_msg_id: seq,
                client_msg_id: id.to_vec().into(),
                sender: "alice".into(),
                recipient: "bob".into(),
                body: format!("m{seq}").into_bytes().into(),
                server_ts_ms: 1_000 + seq,
                ..Default::default()
            })),
        }),
        ..Default::default()
    })
}

/// Bob, connected with nothing waiting, and the machine's opening requests drained.
fn connected(t0: Instant) -> (Db, SyncMachine) {
    let mut db = Db::open_in_memory("bob").unwrap();
    let mut sync = SyncMachine::new(config(), t0);
    let login = LoginInfo {
        next_send_seq: 1,
        store_generation: 1,
        ..LoginInfo::default()
    };
    sync.on_connected(login, t0, &mut db).unwrap();
    while sync.poll_transmit().is_some() {}
    while sync.poll_event().is_some() {}
    (db, sync)
}

/// The `DeliveryAck`s the machine wants sent, and the seqs it announced to the app.
fn drain(sync: &mut SyncMachine) -> (Vec<pb::DeliveryAck>, Vec<u64>) {
    let mut acks = vec![];
    while let Some(t) = sync.poll_transmit() {
        if let Frame::DeliveryAck(a) = t.frame {
            acks.push(a);
        }
    }
    let mut announced = vec![];
    while let Some(ev) = sync.poll_event() {
        if let SyncEvent::Applied(a) = ev {
            announced.extend(a.new_messages.iter().map(|m| m.seq.unwrap()));
        }
    }
    (acks, announced)
}

#[test]
fn pushes_that_arrive_together_are_acknowledged_once() {
    let t0 = Instant::now();
    let (mut db, mut sync) = connected(t0);

    // Alone: acknowledged at once.
    sync.handle_frames(vec![push(1)], t0, &mut db).unwrap();
    let (acks, announced) = drain(&mut sync);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].cumulative_seq, 1);
    assert_eq!(announced, vec![1]);

    // Five together, one out of order: one ACK for all of them.
    let frames = [3, 2, 4, 6, 5].into_iter().map(push).collect();
    sync.handle_frames(frames, t0, &mut db).unwrap();
    let (acks, announced) = drain(&mut sync);
    assert_eq!(acks.len(), 1, "one ACK for pushes that arrived together");
    assert_eq!(acks[0].cumulative_seq, 6);
    assert!(
        acks[0].seqs.is_empty(),
        "the cursor covers them: {:?}",
        acks[0].seqs
    );
    assert_eq!(announced, vec![2, 3, 4, 5, 6]);

    // Above a gap (7 missing), with a duplicate whose ACK was lost: one ACK naming the
    // held seqs, the duplicate stored nothing.
    let frames = [9, 6, 8].into_iter().map(push).collect();
    sync.handle_frames(frames, t0, &mut db).unwrap();
    let (acks, announced) = drain(&mut sync);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].cumulative_seq, 6);
    assert_eq!(acks[0].seqs, vec![8, 9]);
    assert!(announced.is_empty(), "8 and 9 wait for 7: {announced:?}");

    // Only duplicates: acknowledged again, nothing stored.
    let frames = [8, 9].into_iter().map(push).collect();
    sync.handle_frames(frames, t0, &mut db).unwrap();
    let (acks, announced) = drain(&mut sync);
    assert_eq!(acks.len(), 1);
    assert_eq!(
        (acks[0].cumulative_seq, acks[0].seqs.clone()),
        (6, vec![8, 9])
    );
    assert!(announced.is_empty());

    // The gap filled: everything released in order.
    sync.handle_frames(vec![push(7)], t0, &mut db).unwrap();
    let (acks, announced) = drain(&mut sync);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].cumulative_seq, 9);
    assert_eq!(announced, vec![7, 8, 9]);
}

#[test]
fn a_long_run_of_pushes_is_acknowledged_in_bounded_groups() {
    let t0 = Instant::now();
    let (mut db, mut sync) = connected(t0);
    let n = 3 * MAX_PUSHES_TOGETHER as u64 + 5;
    let mut frames: Vec<Frame> = (1..=n).map(push).collect();
    // A frame that is not a push splits the run and is handed back in its place.
    frames.insert(
        10,
        Frame::Kickout(pb::Kickout {
            ..Default::default()
        }),
    );
    let back = sync.handle_frames(frames, t0, &mut db).unwrap();
    assert!(matches!(back.as_slice(), [Frame::Kickout(_)]));
    let (acks, announced) = drain(&mut sync);
    // 10 before the kickout, then groups of at most MAX_PUSHES_TOGETHER.
    let expected = 1 + (n - 10).div_ceil(MAX_PUSHES_TOGETHER as u64) as usize;
    assert_eq!(acks.len(), expected);
    assert_eq!(acks.last().unwrap().cumulative_seq, n);
    assert_eq!(announced, (1..=n).collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any arrival order, any grouping, any duplicates: every entry stored once and
    /// announced in seq order, one ACK per group, the last one covering everything.
    #[test]
    fn any_grouping_order_and_duplicates_end_with_every_entry_once_in_order(
        n in 1u64..150,
        order in proptest::collection::vec(any::<prop::sample::Index>(), 150),
        cuts in proptest::collection::vec(1usize..20, 1..40),
        dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let t0 = Instant::now();
        let (mut db, mut sync) = connected(t0);
        let mut seqs: Vec<u64> = (1..=n).collect();
        for (i, ix) in order.iter().enumerate().take(seqs.len()) {
            let j = ix.index(seqs.len());
            seqs.swap(i, j);
        }
        for d in &dups {
            let at = d.index(seqs.len() + 1);
            let s = seqs[d.index(seqs.len())];
            seqs.insert(at, s);
        }
        let mut announced = vec![];
        let mut groups = 0;
        let mut acks = 0;
        let mut rest = &seqs[..];
        let mut c = 0;
        while !rest.is_empty() {
            let take = cuts[c % cuts.len()].min(rest.len());
            c += 1;
            let frames = rest[..take].iter().map(|s| push(*s)).collect();
            rest = &rest[take..];
            sync.handle_frames(frames, t0, &mut db).unwrap();
            groups += 1;
            let (a, ann) = drain(&mut sync);
            acks += a.len();
            announced.extend(ann);
        }
        prop_assert_eq!(acks, groups, "one ACK per group of pushes");
        prop_assert_eq!(db.cursor().unwrap(), n);
        prop_assert_eq!(announced, (1..=n).collect::<Vec<_>>());
    }
}
