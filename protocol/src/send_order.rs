//! A device's sends back in its order before they reach the store.
//!
//! A client that sends in QUIC datagrams (the default uplink) loses some and has them
//! retransmitted by its QoS engine, so sends arrive out of order: *k + 1* before the
//! retransmitted *k*. The store takes a device's sends only in send-seq order and would
//! answer *k + 1* with `OUT_OF_ORDER`, making the client send it again. Instead the
//! session holds a send that arrives ahead of a missing one, in a small buffer bounded
//! in entries and bytes, and hands it to the store as soon as the gap is filled, like a
//! transport's reassembly queue but without holding anything *behind* the gap's answer.
//!
//! It lives in `protocol/` because the server's session and the client's model server
//! in `client-core/tests/sync_sim.rs` run the same rule.
//!
//! Sans-IO: [`SendOrder::admit`] says what to store now, what it held, or that the
//! buffer is full (answer `OUT_OF_ORDER` with the send seq the device must fill first);
//! the store stays the authority, and [`SendOrder::resync`] follows it when it answers
//! `OUT_OF_ORDER` itself (a deferral the session could not see).

use std::collections::BTreeMap;

use crate::pb;

/// Most sends held ahead of a gap per session.
pub const MAX_HELD: usize = 64;
/// Most bytes (bodies and recipients) held ahead of a gap per session.
pub const MAX_HELD_BYTES: usize = 64 * 1024;

/// What to do with a send.
#[derive(Debug, PartialEq)]
pub enum Admit {
    /// Store these, in this order (the send, then any held sends it released).
    Store(Vec<pb::ChatMessage>),
    /// Held until the gap before it is filled. The send seq missing is `expected`
    /// (a sender that retransmits may be told, so it resends that one at once).
    Held {
        /// The send seq the session waits for.
        expected: u64,
    },
    /// Not held (the buffer is full, or it is too far ahead): answer `OUT_OF_ORDER`
    /// with this expected send seq.
    Refuse {
        /// The send seq the session waits for.
        expected: u64,
    },
}

/// The reassembly queue of one session (see the module docs).
#[derive(Debug, Default)]
pub struct SendOrder {
    /// The send seq the session hands to the store next (0: unknown, pass through).
    next: u64,
    held: BTreeMap<u64, pb::ChatMessage>,
    held_bytes: usize,
}

fn size(m: &pb::ChatMessage) -> usize {
    m.body.len() + m.recipient.len() + 64
}

impl SendOrder {
    /// A queue that expects `next` (the store's next send seq for the device).
    pub fn new(next: u64) -> Self {
        SendOrder {
            next,
            ..SendOrder::default()
        }
    }

    /// Sends held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Decides about a send that arrived.
    pub fn admit(&mut self, m: pb::ChatMessage) -> Admit {
        let seq = m.send_seq;
        if seq == 0 || self.next == 0 || seq < self.next {
            // Unordered (an old client), or a resend of one already handed on: the
            // store answers it (a duplicate, or its own OUT_OF_ORDER).
            return Admit::Store(vec![m]);
        }
        if seq > self.next {
            let replaced = self.held.get(&seq).map_or(0, size);
            let fits = self.held.len() - usize::from(replaced > 0) < MAX_HELD
                && self.held_bytes - replaced + size(&m) <= MAX_HELD_BYTES
                && seq - self.next <= MAX_HELD as u64;
            if !fits {
                return Admit::Refuse {
                    expected: self.next,
                };
            }
            self.held_bytes = self.held_bytes - replaced + size(&m);
            self.held.insert(seq, m);
            return Admit::Held {
                expected: self.next,
            };
        }
        let mut out = vec![m];
        self.next += 1;
        out.extend(self.release());
        Admit::Store(out)
    }

    /// The store answered `OUT_OF_ORDER` with `expected`: it is the authority. Returns
    /// held sends that can go now (those below the new next go too: the store sorts
    /// them out).
    pub fn resync(&mut self, expected: u64) -> Vec<pb::ChatMessage> {
        if expected == 0 {
            return vec![];
        }
        self.next = expected;
        let below: Vec<u64> = self.held.range(..expected).map(|(s, _)| *s).collect();
        let mut out: Vec<pb::ChatMessage> = below.iter().filter_map(|s| self.take(*s)).collect();
        out.extend(self.release());
        out
    }

    fn take(&mut self, seq: u64) -> Option<pb::ChatMessage> {
        let m = self.held.remove(&seq)?;
        self.held_bytes -= size(&m);
        Some(m)
    }

    /// Held sends that are next in order, in order.
    fn release(&mut self) -> Vec<pb::ChatMessage> {
        let mut out = vec![];
        while let Some(m) = self.take(self.next) {
            self.next += 1;
            out.push(m);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(seq: u64, body: usize) -> pb::ChatMessage {
        pb::ChatMessage {
            send_seq: seq,
            recipient: "bob".into(),
            body: vec![b'x'; body].into(),
            ..Default::default()
        }
    }

    fn seqs(a: Admit) -> Vec<u64> {
        match a {
            Admit::Store(v) => v.iter().map(|m| m.send_seq).collect(),
            other => panic!("expected Store, got {other:?}"),
        }
    }

    #[test]
    fn a_send_ahead_of_a_gap_waits_for_it() {
        let mut o = SendOrder::new(5);
        assert_eq!(o.admit(chat(7, 10)), Admit::Held { expected: 5 });
        assert_eq!(o.admit(chat(6, 10)), Admit::Held { expected: 5 });
        assert_eq!(
            o.admit(chat(7, 10)),
            Admit::Held { expected: 5 },
            "a retransmission replaces"
        );
        assert_eq!(o.held(), 2);
        assert_eq!(seqs(o.admit(chat(5, 10))), vec![5, 6, 7]);
        assert_eq!(o.held(), 0);
        assert_eq!(o.held_bytes, 0);
        assert_eq!(seqs(o.admit(chat(8, 10))), vec![8]);
        assert_eq!(
            seqs(o.admit(chat(3, 10))),
            vec![3],
            "an old one goes to the store"
        );
        assert_eq!(seqs(o.admit(chat(0, 10))), vec![0], "unordered passes");
    }

    #[test]
    fn the_buffer_is_bounded_in_entries_and_bytes() {
        let mut o = SendOrder::new(1);
        for s in 2..=(MAX_HELD as u64) {
            assert_eq!(o.admit(chat(s, 10)), Admit::Held { expected: 1 });
        }
        assert_eq!(
            o.admit(chat(MAX_HELD as u64 + 1, 10)),
            Admit::Held { expected: 1 }
        );
        assert_eq!(
            o.admit(chat(MAX_HELD as u64 + 2, 10)),
            Admit::Refuse { expected: 1 },
            "too far ahead / full"
        );
        let mut o = SendOrder::new(1);
        assert_eq!(
            o.admit(chat(2, MAX_HELD_BYTES / 2)),
            Admit::Held { expected: 1 }
        );
        assert_eq!(
            o.admit(chat(3, MAX_HELD_BYTES / 2)),
            Admit::Refuse { expected: 1 },
            "bytes"
        );
        assert!(o.held_bytes <= MAX_HELD_BYTES);
    }

    #[test]
    fn the_store_is_the_authority() {
        let mut o = SendOrder::new(5);
        assert_eq!(seqs(o.admit(chat(5, 1))), vec![5]);
        assert_eq!(o.admit(chat(7, 1)), Admit::Held { expected: 6 });
        // The store refused 5 (busy) and says it expects 5: 6 is still missing.
        assert!(o.resync(5).is_empty());
        assert_eq!(seqs(o.admit(chat(5, 1))), vec![5]);
        assert_eq!(seqs(o.admit(chat(6, 1))), vec![6, 7]);
        // The store is ahead of the session: what is held below goes too.
        assert_eq!(o.admit(chat(10, 1)), Admit::Held { expected: 8 });
        assert_eq!(o.admit(chat(12, 1)), Admit::Held { expected: 8 });
        let out: Vec<u64> = o.resync(11).iter().map(|m| m.send_seq).collect();
        assert_eq!(out, vec![10]);
        assert_eq!(seqs(o.admit(chat(11, 1))), vec![11, 12]);
    }
}
