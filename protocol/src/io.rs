//! Reading frames from async byte streams (feature `tokio`).
//!
//! The one piece of I/O glue both drivers need: pull bytes from a stream into a buffer
//! until [`frame::decode_buf`] yields a whole frame. It keeps the codec's distinction
//! between "the peer closed cleanly between frames", "the stream ended mid-frame" and
//! "these bytes are not a frame".

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::frame::{self, Frame, FrameError, Header};

/// Why [`read_frame`] could not produce a frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes are not a valid frame; answer with the error's code and close.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// The transport failed.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the next frame. `Ok(None)` means the stream ended cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max_body: usize,
) -> Result<Option<(Header, Frame)>, ReadError> {
    loop {
        if let Some(frame) = frame::decode_buf(buf, max_body)? {
            return Ok(Some(frame));
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(4096);
        }
        if reader.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Truncated(buf.len()))
            };
        }
    }
}

/// Decodes every frame of a datagram (one or more whole frames, back to back).
pub fn decode_datagram(
    mut data: &[u8],
    max_body: usize,
) -> Result<Vec<(Header, Frame)>, FrameError> {
    let mut out = vec![];
    while !data.is_empty() {
        match frame::decode(data, max_body)? {
            frame::Decoded::Frame { header, frame, len } => {
                out.push((header, frame));
                data = &data[len..];
            }
            frame::Decoded::Incomplete { .. } => {
                return Err(FrameError::Malformed {
                    kind: frame::FrameKind::Error,
                    reason: "datagram ends inside a frame".into(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[tokio::test]
    async fn reads_frames_then_clean_end_or_truncation() {
        let mut bytes = Frame::Heartbeat(pb::Heartbeat { interval_ms: 1 })
            .to_bytes(0)
            .to_vec();
        bytes.extend_from_slice(&Frame::Logout(pb::Logout {}).to_bytes(0));
        let mut r = &bytes[..];
        let mut buf = BytesMut::new();
        assert!(matches!(
            read_frame(&mut r, &mut buf, 100).await.unwrap(),
            Some((_, Frame::Heartbeat(_)))
        ));
        assert!(matches!(
            read_frame(&mut r, &mut buf, 100).await.unwrap(),
            Some((_, Frame::Logout(_)))
        ));
        assert!(read_frame(&mut r, &mut buf, 100).await.unwrap().is_none());
        let mut cut = &bytes[..3];
        assert!(matches!(
            read_frame(&mut cut, &mut BytesMut::new(), 100).await,
            Err(ReadError::Truncated(3))
        ));
        assert_eq!(decode_datagram(&bytes, 100).unwrap().len(), 2);
        assert!(decode_datagram(&bytes[..5], 100).is_err());
    }
}
