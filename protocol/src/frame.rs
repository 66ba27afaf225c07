//! The frame codec.
//!
//! A frame is a fixed prefix followed by one protobuf message:
//!
//! ```text
//! +---------+---------+---------+-----------------+------------------+
//! | version |  kind   |  flags  | length (varint) | body (protobuf)  |
//! |  1 byte | 1 byte  | 1 byte  |   1..=4 bytes   |  `length` bytes  |
//! +---------+---------+---------+-----------------+------------------+
//! ```
//!
//! Why this shape: the version byte comes first and its meaning never changes, so any
//! peer can tell "this is a version I do not speak" from the first byte and answer with
//! an [`ErrorCode::UnsupportedVersion`] frame (whose layout is also frozen). The kind
//! byte replaces a protobuf `oneof` tag, and the length lets a stream carry frames back
//! to back and lets a reader refuse an oversized frame *before* buffering it. A small
//! text message costs 4 bytes of prefix.
//!
//! [`decode`] never panics on any input: it returns [`Decoded::Incomplete`] when the
//! buffer ends early, [`Decoded::Frame`] with the number of bytes consumed, or a
//! [`FrameError`] that says what is wrong and maps to a wire [`ErrorCode`].

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

use crate::pb;
use crate::pb::ErrorCode;

/// The wire version this crate speaks. Carried in the first byte of every frame.
pub const WIRE_VERSION: u8 = 1;

/// Default upper bound for a frame body (256 KiB). Servers negotiate a smaller
/// message body limit in `LoginResult.max_body_bytes`; this bound only protects the
/// decoder's buffers.
pub const DEFAULT_MAX_FRAME_BODY: usize = 256 * 1024;

/// Largest length the 4-byte varint can carry (2^28 - 1).
const MAX_VARINT_LEN: usize = (1 << 28) - 1;

/// Flag bit: this frame is a retransmission of one sent before (same message id).
pub const FLAG_RETRANSMIT: u8 = 0x01;

macro_rules! frames {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal => $msg:ty ),+ $(,)?) => {
        /// The kind byte of a frame: which protobuf message the body holds.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameKind {
            $( $(#[$doc])* $variant = $code, )+
        }

        impl FrameKind {
            /// Every kind of this wire version, in code order.
            pub const ALL: &'static [FrameKind] = &[$(FrameKind::$variant),+];

            /// The kind's name, as in [`Frame`] (`"Chat"`, `"Push"`...): a metrics label.
            pub fn name(self) -> &'static str {
                match self {
                    $( FrameKind::$variant => stringify!($variant), )+
                }
            }

            /// The kind for a byte, or `None` if this version has no such frame.
            pub fn from_byte(b: u8) -> Option<Self> {
                match b {
                    $( $code => Some(FrameKind::$variant), )+
                    _ => None,
                }
            }
        }

        /// One decoded frame: the kind and its message.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Frame {
            $( $(#[$doc])* $variant($msg), )+
        }

        impl Frame {
            /// The kind byte for this frame.
            pub fn kind(&self) -> FrameKind {
                match self {
                    $( Frame::$variant(_) => FrameKind::$variant, )+
                }
            }

            fn body_len(&self) -> usize {
                match self {
                    $( Frame::$variant(m) => m.encoded_len(), )+
                }
            }

            fn encode_body(&self, buf: &mut impl BufMut) {
                // `encode_raw` cannot fail: the caller reserved the space.
                match self {
                    $( Frame::$variant(m) => m.encode_raw(buf), )+
                }
            }

            fn decode_body(kind: FrameKind, body: &[u8]) -> Result<Self, prost::DecodeError> {
                Ok(match kind {
                    $( FrameKind::$variant => Frame::$variant(<$msg>::decode(body)?), )+
                })
            }
        }
    };
}

frames! {
    /// Client -> server, first frame of a session.
    Login = 0x01 => pb::Login,
    /// Server -> client answer to login.
    LoginResult = 0x02 => pb::LoginResult,
    /// Client -> server, deliberate end of session.
    Logout = 0x03 => pb::Logout,
    /// Server -> client, the session was ended (reason inside).
    Kickout = 0x04 => pb::Kickout,
    /// Client -> server keep-alive probe.
    Heartbeat = 0x05 => pb::Heartbeat,
    /// Server -> client keep-alive answer with the observed client address.
    HeartbeatReply = 0x06 => pb::HeartbeatReply,
    /// Client -> server message send.
    Chat = 0x10 => pb::ChatMessage,
    /// Server -> client result of a send.
    SendResult = 0x11 => pb::SendResult,
    /// Server -> client push of a timeline entry.
    Push = 0x12 => pb::Push,
    /// Client -> server acknowledgement of stored timeline entries.
    DeliveryAck = 0x13 => pb::DeliveryAck,
    /// Client -> server: the user read a conversation up to a seq.
    MarkRead = 0x14 => pb::MarkRead,
    /// Client -> server: recall an own message.
    RecallRequest = 0x15 => pb::RecallRequest,
    /// Server -> client: outcome of a MarkRead, RecallRequest or PushTokenRequest.
    OpResult = 0x16 => pb::OpResult,
    /// Client -> server: pull a timeline range.
    SyncRequest = 0x20 => pb::SyncRequest,
    /// Server -> client: one page of timeline entries.
    SyncResponse = 0x21 => pb::SyncResponse,
    /// Client -> server: ask for conversation summaries.
    SummariesRequest = 0x22 => pb::SummariesRequest,
    /// Server -> client: conversation summaries.
    Summaries = 0x23 => pb::Summaries,
    /// Client -> server: a page of a conversation's history.
    HistoryRequest = 0x24 => pb::HistoryRequest,
    /// Server -> client: a history page.
    HistoryResponse = 0x25 => pb::HistoryResponse,
    /// Client -> server: the large groups' logs (heads, unread, last messages).
    LogsRequest = 0x26 => pb::LogsRequest,
    /// Server -> client: the large groups' logs.
    Logs = 0x27 => pb::Logs,
    /// Client -> server: a group operation.
    GroupRequest = 0x30 => pb::GroupRequest,
    /// Server -> client: outcome of a group operation.
    GroupResponse = 0x31 => pb::GroupResponse,
    /// Client -> server: register a push token.
    PushTokenRequest = 0x32 => pb::PushTokenRequest,
    /// Either direction: an error. Layout frozen across versions.
    Error = 0x7f => pb::Error,
}

impl FrameKind {
    /// Whether a sender puts this frame in a QUIC DATAGRAM when it fits: pushes and
    /// their ACKs, sends (`Chat`) and their results. Each side's QoS engine repairs a
    /// lost push or send, a lost ACK or result only causes a resend (deduplicated by seq
    /// or client message id), and the receiver restores order (the client by inbox seq,
    /// the server by the device's send seq), so one lost packet never holds up the next.
    /// A client may still send its `Chat`s on the stream (`Uplink::Stream`); the server
    /// then answers them on the stream too.
    pub fn prefers_datagram(self) -> bool {
        matches!(
            self,
            FrameKind::Push | FrameKind::DeliveryAck | FrameKind::Chat | FrameKind::SendResult
        )
    }
}

/// The fixed prefix of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Wire version (first byte).
    pub version: u8,
    /// Which message the body holds.
    pub kind: FrameKind,
    /// Flag bits ([`FLAG_RETRANSMIT`]); unknown bits are carried and ignored.
    pub flags: u8,
    /// Length of the body in bytes.
    pub body_len: usize,
    /// Length of the prefix itself (3 bytes + the varint).
    pub header_len: usize,
}

/// What [`decode`] found at the start of a buffer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A whole frame; `len` bytes of the buffer were used.
    Frame {
        /// The frame's prefix.
        header: Header,
        /// The frame.
        frame: Frame,
        /// Bytes consumed (prefix + body).
        len: usize,
    },
    /// The buffer ends before the frame does. `needed` is the total frame length
    /// once the prefix is known.
    Incomplete {
        /// Total bytes the frame will occupy, if the prefix was complete.
        needed: Option<usize>,
    },
}

/// Why bytes are not a valid frame. Every variant maps to a wire [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first byte names a wire version this peer does not speak.
    #[error("unsupported wire version {0} (this peer speaks {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    /// The kind byte names no frame of this version.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The varint length is longer than 4 bytes.
    #[error("frame length prefix is malformed")]
    BadLength,
    /// The body is longer than the reader accepts.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced body length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// The body is not a valid protobuf message of the announced kind.
    #[error("malformed {kind:?} body: {reason}")]
    Malformed {
        /// The announced kind.
        kind: FrameKind,
        /// The protobuf decoder's explanation.
        reason: String,
    },
}

impl FrameError {
    /// The wire error code to send back before closing.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::UnknownKind(_) => ErrorCode::UnknownFrameKind,
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::BadLength | FrameError::Malformed { .. } => ErrorCode::MalformedFrame,
        }
    }
}

/// Parses only the prefix. `Ok(None)` means more bytes are needed.
pub fn decode_header(buf: &[u8], max_body: usize) -> Result<Option<Header>, FrameError> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != WIRE_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    if buf.len() < 3 {
        return Ok(None);
    }
    let kind = FrameKind::from_byte(buf[1]).ok_or(FrameError::UnknownKind(buf[1]))?;
    let flags = buf[2];
    let mut body_len: usize = 0;
    let mut i = 0;
    loop {
        let Some(&b) = buf.get(3 + i) else {
            return Ok(None);
        };
        body_len |= usize::from(b & 0x7f) << (7 * i);
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i == 4 {
            return Err(FrameError::BadLength);
        }
    }
    if body_len > max_body {
        return Err(FrameError::TooLarge {
            len: body_len,
            max: max_body,
        });
    }
    Ok(Some(Header {
        version,
        kind,
        flags,
        body_len,
        header_len: 3 + i,
    }))
}

/// Decodes one frame from the start of `buf`.
pub fn decode(buf: &[u8], max_body: usize) -> Result<Decoded, FrameError> {
    let Some(header) = decode_header(buf, max_body)? else {
        return Ok(Decoded::Incomplete { needed: None });
    };
    let total = header.header_len + header.body_len;
    if buf.len() < total {
        return Ok(Decoded::Incomplete {
            needed: Some(total),
        });
    }
    let body = &buf[header.header_len..total];
    let frame = Frame::decode_body(header.kind, body).map_err(|e| FrameError::Malformed {
        kind: header.kind,
        reason: e.to_string(),
    })?;
    Ok(Decoded::Frame {
        header,
        frame,
        len: total,
    })
}

/// Decodes one frame from a `BytesMut` read buffer and advances past it.
/// `Ok(None)` means the buffer holds no whole frame yet.
pub fn decode_buf(
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Option<(Header, Frame)>, FrameError> {
    match decode(buf, max_body)? {
        Decoded::Frame { header, frame, len } => {
            buf.advance(len);
            Ok(Some((header, frame)))
        }
        Decoded::Incomplete { needed } => {
            if let Some(n) = needed {
                buf.reserve(n.saturating_sub(buf.len()));
            }
            Ok(None)
        }
    }
}

impl Frame {
    /// Appends this frame (prefix + body) to `buf`.
    ///
    /// # Panics
    /// If the body is larger than 2^28 - 1 bytes, which no valid Tern frame is:
    /// bodies are bounded far below that by [`DEFAULT_MAX_FRAME_BODY`] and by the
    /// server's message size limit, both checked before a frame is built.
    pub fn encode(&self, flags: u8, buf: &mut impl BufMut) {
        let len = self.body_len();
        assert!(
            len <= MAX_VARINT_LEN,
            "frame body of {len} bytes cannot be encoded"
        );
        buf.put_u8(WIRE_VERSION);
        buf.put_u8(self.kind() as u8);
        buf.put_u8(flags);
        prost::encoding::encode_varint(len as u64, buf);
        self.encode_body(buf);
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self, flags: u8) -> bytes::Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(flags, &mut buf);
        buf.freeze()
    }

    /// Length of the whole encoded frame.
    pub fn encoded_len(&self) -> usize {
        let len = self.body_len();
        3 + prost::encoding::encoded_len_varint(len as u64) + len
    }

    /// Convenience constructor for an error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>, request_id: u64) -> Self {
        Frame::Error(pb::Error {
            code: code as i32,
            message: message.into(),
            request_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Frame {
        Frame::Chat(pb::ChatMessage {
            client_msg_id: vec![7u8; 16].into(),
            sender: "alice".into(),
            recipient: "bob".into(),
            kind: pb::ConversationKind::Direct as i32,
            content_type: 0,
            body: b"hello, bob".to_vec().into(),
            client_ts_ms: 1_700_000_000_000,
            send_seq: 0,
        })
    }

    #[test]
    fn round_trip_and_incomplete_prefixes() {
        let f = chat();
        let bytes = f.to_bytes(FLAG_RETRANSMIT);
        assert_eq!(bytes.len(), f.encoded_len());
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    decode(&bytes[..cut], DEFAULT_MAX_FRAME_BODY),
                    Ok(Decoded::Incomplete { .. })
                ),
                "prefix of {cut} bytes must be incomplete"
            );
        }
        match decode(&bytes, DEFAULT_MAX_FRAME_BODY).unwrap() {
            Decoded::Frame { header, frame, len } => {
                assert_eq!(frame, f);
                assert_eq!(len, bytes.len());
                assert_eq!(header.flags, FLAG_RETRANSMIT);
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    #[test]
    fn back_to_back_frames_in_one_buffer() {
        let mut buf = BytesMut::new();
        chat().encode(0, &mut buf);
        Frame::Heartbeat(pb::Heartbeat {
            interval_ms: 30_000,
            ..Default::default()
        })
        .encode(0, &mut buf);
        let (_, a) = decode_buf(&mut buf, DEFAULT_MAX_FRAME_BODY)
            .unwrap()
            .unwrap();
        let (_, b) = decode_buf(&mut buf, DEFAULT_MAX_FRAME_BODY)
            .unwrap()
            .unwrap();
        assert_eq!(a.kind(), FrameKind::Chat);
        assert_eq!(b.kind(), FrameKind::Heartbeat);
        assert!(buf.is_empty());
        assert_eq!(decode_buf(&mut buf, DEFAULT_MAX_FRAME_BODY).unwrap(), None);
    }

    #[test]
    fn rejects_with_the_right_error() {
        assert_eq!(
            decode(&[2, 1, 0, 0], 10),
            Err(FrameError::UnsupportedVersion(2))
        );
        assert_eq!(
            decode(&[1, 0x55, 0, 0], 10),
            Err(FrameError::UnknownKind(0x55))
        );
        assert_eq!(
            decode(&[1, 1, 0, 0x80, 0x80, 0x80, 0x80], 10),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            decode(&[1, 1, 0, 11], 10),
            Err(FrameError::TooLarge { len: 11, max: 10 })
        );
        // A Login body whose field 1 claims 5 bytes but the body has only 1.
        let err = decode(&[1, 1, 0, 3, 0x0a, 5, b'a'], 10).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Malformed {
                kind: FrameKind::Login,
                ..
            }
        ));
        assert_eq!(err.code(), ErrorCode::MalformedFrame);
    }

    #[test]
    fn oversized_frame_is_refused_from_its_prefix_alone() {
        // Only the prefix has arrived, announcing 1 MiB: refused before buffering.
        let mut prefix = vec![1u8, FrameKind::Chat as u8, 0];
        prost::encoding::encode_varint(1 << 20, &mut prefix);
        assert!(matches!(
            decode(&prefix, DEFAULT_MAX_FRAME_BODY),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn text_message_overhead_is_small() {
        let f = Frame::Heartbeat(pb::Heartbeat::default());
        assert_eq!(
            f.encoded_len(),
            4,
            "an empty heartbeat is the 4-byte prefix alone"
        );
    }
}
