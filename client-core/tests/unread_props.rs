//! Property test: per-conversation and total unread counts agree on every device, and
//! with the server, after any interleaving of messages, read marks made on any device,
//! summaries taken at any moment, and entries applied in any order.
//!
//! A small model server keeps the user's timeline (messages in, messages out, READ
//! marks with the server's unread count at the mark). Each device applies the same
//! entries shuffled, in random chunks, with a summary snapshot and local `mark_read`
//! calls at random moments; finally every device's queued read marks reach the model
//! server (as the connection does) and the resulting entries reach every device.

use std::collections::HashMap;

use proptest::prelude::*;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tern_client::ConversationKind;
use tern_client::store::Db;
use tern_protocol::pb;
use tern_protocol::pb::timeline_entry::Body;

const ME: &str = "bob";
/// (kind, conversation, a sender other than me)
const CONVS: [(ConversationKind, &str, &str); 3] = [
    (ConversationKind::Direct, "alice", "alice"),
    (ConversationKind::Direct, "carol", "carol"),
    (ConversationKind::Group, "g1", "dave"),
];

#[derive(Default)]
struct Model {
    entries: Vec<pb::TimelineEntry>,
    /// (seq, conversation index) of incoming messages.
    incoming: Vec<(u64, usize)>,
    marks: HashMap<usize, u64>,
    next_msg: u64,
}

impl Model {
    fn head(&self) -> u64 {
        self.entries.len() as u64
    }

    fn message(&mut self, conv: usize, outgoing: bool) {
        let (kind, id, peer) = CONVS[conv];
        let seq = self.head() + 1;
        self.next_msg += 1;
        let (sender, recipient) = match (outgoing, kind) {
            (true, _) => (ME, id),
            (false, ConversationKind::Group) => (peer, id),
            (false, _) => (peer, ME),
        };
        if !outgoing {
            self.incoming.push((seq, conv));
        }
        self.entries.push(pb::TimelineEntry {
            seq,
            body: Some(Body::Message(pb::StoredMessage {
                server_msg_id: self.next_msg,
                client_msg_id: {
                    let mut b = vec![0u8; 16];
                    b[..8].copy_from_slice(&self.next_msg.to_be_bytes());
                    b.into()
                },
                sender: sender.into(),
                recipient: recipient.into(),
                kind: kind.to_wire(),
                content_type: 0,
                body: b"m".to_vec().into(),
                client_ts_ms: 1,
                server_ts_ms: 1_000 + self.next_msg,
                recalled: false,
            })),
        });
    }

    fn unread_at(&self, conv: usize, mark: u64, at: u64) -> u64 {
        self.incoming
            .iter()
            .filter(|(s, c)| *c == conv && *s > mark && *s <= at)
            .count() as u64
    }

    /// The server's handling of a MarkRead (see server/src/store/sqlite/marks.rs).
    fn read(&mut self, conv: usize, up_to: u64) {
        let up_to = up_to.min(self.head());
        let prev = self.marks.get(&conv).copied().unwrap_or(0);
        if up_to <= prev {
            return;
        }
        self.marks.insert(conv, up_to);
        let unread = self.unread_at(conv, up_to, u64::MAX);
        let (kind, id, _) = CONVS[conv];
        let seq = self.head() + 1;
        self.entries.push(pb::TimelineEntry {
            seq,
            body: Some(Body::Receipt(pb::Receipt {
                status: pb::receipt::Status::Read as i32,
                kind: kind.to_wire(),
                conversation: id.into(),
                by_user: ME.into(),
                up_to_server_msg_id: 0,
                up_to_seq: up_to,
                unread,
                ..Default::default()
            })),
        });
    }

    /// Summaries as the server answers them when its head is `at`.
    fn summaries(&self, at: u64) -> Vec<pb::ConversationSummary> {
        (0..CONVS.len())
            .filter_map(|conv| {
                let (kind, id, _) = CONVS[conv];
                let msgs: Vec<&pb::TimelineEntry> = self.entries[..at as usize]
                    .iter()
                    .filter(|e| match &e.body {
                        Some(Body::Message(m)) => {
                            m.kind == kind.to_wire() && (m.sender == id || m.recipient == id)
                        }
                        _ => false,
                    })
                    .collect();
                let latest = msgs.last()?.seq;
                // The mark as of `at`: the last own READ entry at or below it.
                let mark = self.entries[..at as usize]
                    .iter()
                    .filter_map(|e| match &e.body {
                        Some(Body::Receipt(r)) if r.conversation == id => Some(r.up_to_seq),
                        _ => None,
                    })
                    .max()
                    .unwrap_or(0);
                Some(pb::ConversationSummary {
                    kind: kind.to_wire(),
                    conversation: id.into(),
                    unread: self.unread_at(conv, mark, at),
                    latest_seq: latest,
                    last: msgs
                        .iter()
                        .rev()
                        .take(2)
                        .rev()
                        .map(|e| (*e).clone())
                        .collect(),
                    ..Default::default()
                })
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    In(usize),
    Out(usize),
    /// A read mark from some device, up to a fraction of the head.
    Read(usize, f64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize).prop_map(Op::In),
        1 => (0..3usize).prop_map(Op::Out),
        2 => (0..3usize, 0.0..=1.0f64).prop_map(|(c, f)| Op::Read(c, f)),
    ]
}

/// Applies every entry of `model` to `db` shuffled, in chunks, with a summary and
/// local read marks at random moments.
fn play(db: &mut Db, model: &Model, seed: u64) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..model.entries.len()).collect();
    order.shuffle(&mut rng);
    let summary_at = rng.random_range(0..=order.len());
    let mut i = 0;
    while i < order.len() || summary_at == order.len() && i == order.len() {
        if i == summary_at {
            let head = rng.random_range(0..=model.head());
            db.apply_summaries(&model.summaries(head), head, 0).unwrap();
        }
        if i == order.len() {
            break;
        }
        if rng.random_bool(0.2) {
            let (kind, id, _) = CONVS[rng.random_range(0..CONVS.len())];
            db.mark_read(kind, id).unwrap();
        }
        let n = rng.random_range(1..=4).min(order.len() - i);
        let chunk: Vec<pb::TimelineEntry> = order[i..i + n]
            .iter()
            .map(|j| model.entries[*j].clone())
            .collect();
        db.apply_entries(&chunk).unwrap();
        i += n;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn unread_counts_agree_on_every_device(
        ops in proptest::collection::vec(op(), 1..40),
        seeds in proptest::collection::vec(any::<u64>(), 3),
    ) {
        let mut model = Model::default();
        for op in &ops {
            match op {
                Op::In(c) => model.message(*c, false),
                Op::Out(c) => model.message(*c, true),
                Op::Read(c, f) => {
                    let up_to = (model.head() as f64 * f) as u64;
                    model.read(*c, up_to);
                }
            }
        }
        let dirs: Vec<_> = seeds.iter().map(|_| tempfile::tempdir().unwrap()).collect();
        let mut dbs: Vec<Db> = dirs.iter().map(|d| Db::open(d.path(), ME).unwrap()).collect();
        let before = model.entries.len();
        for (db, seed) in dbs.iter_mut().zip(&seeds) {
            play(db, &model, *seed);
        }
        // The connection sends queued read marks; the server turns them into entries
        // that reach every device.
        for db in &dbs {
            for (kind, id, up_to) in db.pending_reads().unwrap() {
                let conv = CONVS.iter().position(|(k, c, _)| *k == kind && *c == id).unwrap();
                model.read(conv, up_to);
            }
        }
        let new: Vec<pb::TimelineEntry> = model.entries[before..].to_vec();
        for db in dbs.iter_mut() {
            db.apply_entries(&new).unwrap();
        }
        let truth: Vec<u64> = (0..CONVS.len())
            .map(|c| model.unread_at(c, model.marks.get(&c).copied().unwrap_or(0), u64::MAX))
            .collect();
        for (d, db) in dbs.iter().enumerate() {
            for (c, (kind, id, _)) in CONVS.iter().enumerate() {
                let unread = db.conversation(*kind, id).unwrap().map_or(0, |c| c.unread);
                prop_assert_eq!(unread, truth[c], "device {} conversation {}", d, id);
            }
            prop_assert_eq!(db.total_unread().unwrap(), truth.iter().sum::<u64>(), "device {} total", d);
        }
    }
}

/// The same property for a large group, whose messages are entries of the group's log
/// and whose read marks are entries of the user's timeline carrying log positions.
mod large_group {
    use super::*;

    const G: &str = "big";

    #[derive(Default)]
    struct LogModel {
        /// The user's timeline: the join event, then read marks.
        user: Vec<pb::TimelineEntry>,
        /// The group's log.
        log: Vec<pb::TimelineEntry>,
        incoming: Vec<u64>,
        mark: u64,
        /// (log head, mark) after each step, for summaries taken at any moment.
        history: Vec<(u64, u64)>,
    }

    impl LogModel {
        fn new() -> Self {
            let mut m = LogModel::default();
            m.user.push(pb::TimelineEntry {
                seq: 1,
                body: Some(Body::Group(pb::GroupEvent {
                    r#type: pb::group_event::Type::Created as i32,
                    group: G.into(),
                    name: "big".into(),
                    large: true,
                    log_seq: 0,
                    ..Default::default()
                })),
            });
            m
        }

        fn head(&self) -> u64 {
            self.log.len() as u64
        }

        fn message(&mut self, outgoing: bool) {
            let seq = self.head() + 1;
            if !outgoing {
                self.incoming.push(seq);
            }
            let mut id = vec![0u8; 16];
            id[..8].copy_from_slice(&seq.to_be_bytes());
            id[8] = 7;
            self.log.push(pb::TimelineEntry {
                seq,
                body: Some(Body::Message(pb::StoredMessage {
                    server_msg_id: 10_000 + seq,
                    client_msg_id: id.into(),
                    sender: if outgoing { ME.into() } else { "dave".into() },
                    recipient: G.into(),
                    kind: ConversationKind::Group.to_wire(),
                    body: b"m".to_vec().into(),
                    server_ts_ms: 1_000 + seq,
                    ..Default::default()
                })),
            });
            self.history.push((self.head(), self.mark));
        }

        fn unread_above(&self, mark: u64, head: u64) -> u64 {
            self.incoming
                .iter()
                .filter(|s| **s > mark && **s <= head)
                .count() as u64
        }

        /// The server's `mark_read_log`.
        fn read(&mut self, up_to: u64) {
            let up_to = up_to.min(self.head());
            if up_to <= self.mark {
                return;
            }
            self.mark = up_to;
            let seq = self.user.len() as u64 + 1;
            self.user.push(pb::TimelineEntry {
                seq,
                body: Some(Body::Receipt(pb::Receipt {
                    status: pb::receipt::Status::Read as i32,
                    kind: ConversationKind::Group.to_wire(),
                    conversation: G.into(),
                    by_user: ME.into(),
                    up_to_seq: up_to,
                    unread: self.unread_above(up_to, self.head()),
                    log: G.into(),
                    at_seq: self.head(),
                    ..Default::default()
                })),
            });
            self.history.push((self.head(), self.mark));
        }

        /// `Logs` as the server answers it at a moment of the history.
        fn summary(&self, (head, mark): (u64, u64)) -> pb::ConversationSummary {
            let last: Vec<pb::TimelineEntry> = self.log[..head as usize]
                .iter()
                .rev()
                .take(2)
                .rev()
                .cloned()
                .collect();
            pb::ConversationSummary {
                kind: ConversationKind::Group.to_wire(),
                conversation: G.into(),
                unread: self.unread_above(mark, head),
                latest_seq: head,
                last,
                log: G.into(),
                read_up_to: mark,
                joined_at: 0,
                restored_seq: 0,
            }
        }

        fn truth(&self) -> u64 {
            self.unread_above(self.mark, u64::MAX)
        }
    }

    fn play(db: &mut Db, model: &LogModel, seed: u64) {
        let mut rng = SmallRng::seed_from_u64(seed);
        // The join event first (as the server sends it before any log entry is pushed
        // to this member), then user and log entries shuffled together.
        db.apply_entries(&model.user[..1]).unwrap();
        let mut order: Vec<(bool, usize)> = (1..model.user.len())
            .map(|i| (true, i))
            .chain((0..model.log.len()).map(|i| (false, i)))
            .collect();
        order.shuffle(&mut rng);
        let summary_at = rng.random_range(0..=order.len());
        for (i, (user, j)) in order.into_iter().enumerate() {
            if i == summary_at && !model.history.is_empty() {
                let at = model.history[rng.random_range(0..model.history.len())];
                db.apply_log_summaries(&[model.summary(at)], 0).unwrap();
            }
            if rng.random_bool(0.15) {
                db.mark_read(ConversationKind::Group, G).unwrap();
            }
            if user {
                db.apply_entries(&model.user[j..j + 1]).unwrap();
            } else {
                db.apply_log_entries(G, &model.log[j..j + 1]).unwrap();
            }
        }
    }

    #[derive(Debug, Clone)]
    enum LogOp {
        In,
        Out,
        Read(f64),
    }

    fn log_op() -> impl Strategy<Value = LogOp> {
        prop_oneof![
            4 => Just(LogOp::In),
            1 => Just(LogOp::Out),
            2 => (0.0..=1.0f64).prop_map(LogOp::Read),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn large_group_unread_counts_agree_on_every_device(
            ops in proptest::collection::vec(log_op(), 1..40),
            seeds in proptest::collection::vec(any::<u64>(), 3),
        ) {
            let mut model = LogModel::new();
            for op in &ops {
                match op {
                    LogOp::In => model.message(false),
                    LogOp::Out => model.message(true),
                    LogOp::Read(f) => {
                        let up_to = (model.head() as f64 * f) as u64;
                        model.read(up_to);
                    }
                }
            }
            let dirs: Vec<_> = seeds.iter().map(|_| tempfile::tempdir().unwrap()).collect();
            let mut dbs: Vec<Db> = dirs.iter().map(|d| Db::open(d.path(), ME).unwrap()).collect();
            let before = model.user.len();
            for (db, seed) in dbs.iter_mut().zip(&seeds) {
                play(db, &model, *seed);
            }
            for db in &dbs {
                for (kind, id, up_to) in db.pending_reads().unwrap() {
                    prop_assert_eq!((kind, id.as_str()), (ConversationKind::Group, G));
                    model.read(up_to);
                }
            }
            let new: Vec<pb::TimelineEntry> = model.user[before..].to_vec();
            for db in dbs.iter_mut() {
                db.apply_entries(&new).unwrap();
            }
            for (d, db) in dbs.iter().enumerate() {
                let unread = db.conversation(ConversationKind::Group, G).unwrap().map_or(0, |c| c.unread);
                prop_assert_eq!(unread, model.truth(), "device {}", d);
            }
        }
    }
}
