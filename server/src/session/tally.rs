//! Bytes on the wire per frame kind: `tern_frames_total` and `tern_frame_bytes_total`,
//! labelled by `kind` and `direction` (`in`, `out`), whole frames with their Tern header
//! (QUIC's own overhead is not in them). `tern-bench wire` reads them to say where a
//! message's bytes go; an operator reads them to see which traffic dominates.
//!
//! The counters are looked up once and kept: a lookup by name and labels costs a hash
//! and a map search, and every frame in and out counts two (callgrind: 12k instructions
//! a message, docs/bench/analysis.md, "Cost per message: ninth round").

use std::sync::OnceLock;

use metrics::Counter;
use tern_protocol::frame::{DEFAULT_MAX_FRAME_BODY, Frame, FrameKind, decode_header};

/// The two counters of one kind and direction.
struct Counters {
    frames: Counter,
    bytes: Counter,
}

/// Indexed by the kind byte, then 0 for `in` and 1 for `out`. Made at the first frame
/// counted, after the server installed its metrics recorder.
fn counters() -> &'static [Option<[Counters; 2]>] {
    static TABLE: OnceLock<Vec<Option<[Counters; 2]>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let of = |kind: FrameKind, direction: &'static str| Counters {
            frames: metrics::counter!("tern_frames_total", "kind" => kind.name(), "direction" => direction),
            bytes: metrics::counter!("tern_frame_bytes_total", "kind" => kind.name(), "direction" => direction),
        };
        (0..=u8::MAX)
            .map(|b| FrameKind::from_byte(b).map(|k| [of(k, "in"), of(k, "out")]))
            .collect()
    })
}

fn count(kind: FrameKind, direction: &'static str, bytes: usize) {
    if let Some(pair) = &counters()[kind as u8 as usize] {
        let c = &pair[usize::from(direction == "out")];
        c.frames.increment(1);
        c.bytes.increment(bytes as u64);
    }
}

/// A frame the session received.
pub(crate) fn received(frame: &Frame) {
    count(frame.kind(), "in", frame.encoded_len());
}

/// A frame the session sends.
pub(crate) fn sent(frame: &Frame) {
    count(frame.kind(), "out", frame.encoded_len());
}

/// Encoded frames the session sends in one buffer (a datagram may carry several).
pub(crate) fn sent_bytes(mut bytes: &[u8]) {
    while let Ok(Some(h)) = decode_header(bytes, DEFAULT_MAX_FRAME_BODY) {
        let len = h.header_len + h.body_len;
        if len > bytes.len() {
            return;
        }
        count(h.kind, "out", len);
        bytes = &bytes[len..];
    }
}
