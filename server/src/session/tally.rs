//! Bytes on the wire per frame kind: `tern_frames_total` and `tern_frame_bytes_total`,
//! labelled by `kind` and `direction` (`in`, `out`), whole frames with their Tern header
//! (QUIC's own overhead is not in them). `tern-bench wire` reads them to say where a
//! message's bytes go; an operator reads them to see which traffic dominates.

use tern_protocol::frame::{DEFAULT_MAX_FRAME_BODY, Frame, FrameKind, decode_header};

fn count(kind: FrameKind, direction: &'static str, bytes: usize) {
    let kind = kind.name();
    metrics::counter!("tern_frames_total", "kind" => kind, "direction" => direction).increment(1);
    metrics::counter!("tern_frame_bytes_total", "kind" => kind, "direction" => direction)
        .increment(bytes as u64);
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
