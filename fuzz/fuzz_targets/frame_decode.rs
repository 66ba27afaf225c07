//! Fuzz target: the frame decoder, as a stream reader uses it.
//!
//! Properties checked on every input:
//! * decoding never panics, whatever the bytes;
//! * a decoded frame re-encodes to bytes that decode to the same frame;
//! * a stream reader (`decode_buf` in a loop) always makes progress or stops.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_protocol::frame::{self, Decoded};

const MAX_BODY: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(Decoded::Frame { header, frame, len }) = frame::decode(data, MAX_BODY) {
        assert!(len <= data.len());
        let again = frame.to_bytes(header.flags);
        match frame::decode(&again, MAX_BODY) {
            Ok(Decoded::Frame { frame: f2, .. }) => assert_eq!(f2, frame),
            other => panic!("re-encoded frame did not decode: {other:?}"),
        }
    }
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match frame::decode_buf(&mut buf, MAX_BODY) {
            Ok(Some(_)) => assert!(buf.len() < before, "a decoded frame consumes bytes"),
            Ok(None) | Err(_) => break,
        }
    }
});
