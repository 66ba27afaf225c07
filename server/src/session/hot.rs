//! The metrics every message touches, looked up once and kept.
//!
//! `metrics::counter!("name")` finds its handle by hashing the name and searching the
//! recorder's map at every call. On the relay path (a send counted in and stored, two
//! pushes, two push ACKs timed) these six lookups were 1.3k of the 3.2k instructions a
//! message spent in the recorder's lookups (callgrind, one message at a time;
//! docs/bench/analysis.md, "Cost per message: tenth round"). The handles are made at
//! first use, after the server installed its recorder, like `tally`'s.

use std::sync::OnceLock;

use metrics::{Counter, Histogram};

pub(crate) struct Hot {
    /// `tern_messages_in_total`: sends received, valid or not.
    pub(crate) messages_in: Counter,
    /// `tern_messages_stored_total`: sends stored (not duplicates).
    pub(crate) messages_stored: Counter,
    /// `tern_pushes_total`: pushes sent (first transmissions).
    pub(crate) pushes: Counter,
    /// `tern_push_ack_seconds`: from a push to its ACK.
    pub(crate) push_ack_seconds: Histogram,
}

pub(crate) fn hot() -> &'static Hot {
    static HOT: OnceLock<Hot> = OnceLock::new();
    HOT.get_or_init(|| Hot {
        messages_in: metrics::counter!("tern_messages_in_total"),
        messages_stored: metrics::counter!("tern_messages_stored_total"),
        pushes: metrics::counter!("tern_pushes_total"),
        push_ack_seconds: metrics::histogram!("tern_push_ack_seconds"),
    })
}
