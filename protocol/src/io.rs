//! Reading frames from async byte streams (feature `tokio`).
//!
//! The one piece of I/O glue both drivers need: pull bytes from a stream into a buffer
//! until [`frame::decode_buf`] yields a whole frame. It keeps the codec's distinction
//! between "the peer closed cleanly between frames", "the stream ended mid-frame" and
//! "these bytes are not a frame". Also the UDP socket setup both ends share
//! ([`udp_socket`]).

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

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

/// What a reader task hands to its session loop.
///
/// The frame is boxed: a session's channel allocates room for 32 of these up front, and
/// with the frame inline (152 bytes) that was ~5 KiB of every idle session's memory.
#[derive(Debug)]
pub enum Inbound {
    /// A frame arrived on the session stream.
    Frame(Box<Frame>),
    /// A frame arrived in a QUIC datagram (the server answers a send that came this
    /// way in a datagram too: the sender retransmits it, so a lost answer is repaired).
    Datagram(Box<Frame>),
    /// The peer sent bytes that are not a frame: answer with the error's code and close.
    Invalid(FrameError),
    /// The stream or connection ended (the reason, for logs).
    Closed(String),
}

/// Feeds the frames of every datagram `next` yields to `tx`, until `next` yields
/// `None` (the connection closed) or the receiver is gone. `next` is the transport's
/// "receive one datagram", e.g. quinn's `Connection::read_datagram`.
pub async fn pump_datagrams<F, Fut, B>(mut next: F, max_body: usize, tx: mpsc::Sender<Inbound>)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<B>>,
    B: AsRef<[u8]>,
{
    while let Some(datagram) = next().await {
        for event in datagram_events(datagram.as_ref(), max_body) {
            if tx.send(event).await.is_err() {
                return;
            }
        }
    }
}

/// The frames of one datagram as inbound events (or one `Invalid`).
pub fn datagram_events(data: &[u8], max_body: usize) -> Vec<Inbound> {
    match decode_datagram(data, max_body) {
        Ok(frames) => frames
            .into_iter()
            .map(|(_, f)| Inbound::Datagram(Box::new(f)))
            .collect(),
        Err(e) => vec![Inbound::Invalid(e)],
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

/// The event of a session stream that ended with `buf` not yet decoded: a clean end
/// between frames, or one inside a frame.
pub fn stream_ended(buf: &BytesMut) -> Inbound {
    Inbound::Closed(if buf.is_empty() {
        "stream finished".to_string()
    } else {
        ReadError::Truncated(buf.len()).to_string()
    })
}

/// Reads frames from a source that hands out owned chunks (a QUIC stream's
/// `read_chunk`, threaded through `next` as `state`) until it ends or fails, handing
/// each to `tx`; the last event is always `Invalid` or `Closed`. Run it as its own task,
/// so a session loop never waits inside a read. Nothing is buffered while the peer is
/// silent: the buffer is released whenever it holds no partial frame, so an idle session
/// costs no read buffer (a reader over `AsyncRead` kept 4 KiB per session, ~10 % of an
/// idle server session).
pub async fn pump_chunks<S, F, Fut>(
    mut state: S,
    mut next: F,
    mut buf: BytesMut,
    max_body: usize,
    tx: mpsc::Sender<Inbound>,
) where
    F: FnMut(S) -> Fut,
    Fut: std::future::Future<Output = (S, Result<Option<bytes::Bytes>, String>)>,
{
    loop {
        loop {
            match frame::decode_buf(&mut buf, max_body) {
                Ok(Some((_, f))) => {
                    if tx.send(Inbound::Frame(Box::new(f))).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Inbound::Invalid(e)).await;
                    return;
                }
            }
        }
        if buf.is_empty() && buf.capacity() > 0 {
            buf = BytesMut::new();
        }
        let (s, chunk) = next(state).await;
        state = s;
        match chunk {
            Ok(Some(bytes)) => buf.extend_from_slice(&bytes),
            Ok(None) => {
                let _ = tx.send(stream_ended(&buf)).await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Inbound::Closed(e)).await;
                return;
            }
        }
    }
}

/// Starts the two reader tasks of a Tern session over QUIC (feature `quinn`): the
/// session stream (`buf` holds bytes already read past the login frame) and the
/// connection's datagrams, both feeding `tx`. Server and client use the same pair.
#[cfg(feature = "quinn")]
pub fn spawn_session_readers(
    conn: quinn::Connection,
    recv: quinn::RecvStream,
    buf: BytesMut,
    max_body: usize,
    tx: mpsc::Sender<Inbound>,
) {
    let read = |mut r: quinn::RecvStream| async move {
        let chunk = read_quic_chunk(&mut r).await;
        (r, chunk)
    };
    tokio::spawn(pump_chunks(recv, read, buf, max_body, tx.clone()));
    let next = move || {
        let conn = conn.clone();
        async move { conn.read_datagram().await.ok() }
    };
    tokio::spawn(pump_datagrams(next, max_body, tx));
}

/// The next chunk of a QUIC session stream, in order (`None`: the stream finished);
/// the error as a reason for the logs.
#[cfg(feature = "quinn")]
pub async fn read_quic_chunk(r: &mut quinn::RecvStream) -> Result<Option<bytes::Bytes>, String> {
    match r.read_chunk(usize::MAX, true).await {
        Ok(c) => Ok(c.map(|c| c.bytes)),
        Err(e) => Err(format!("read failed: {e}")),
    }
}

/// Sends an already encoded `frame` in a QUIC datagram when its kind prefers one
/// ([`FrameKind::prefers_datagram`](crate::frame::FrameKind::prefers_datagram)) and it
/// fits; returns `false` when it must go on the session stream instead.
#[cfg(feature = "quinn")]
pub fn send_as_datagram(conn: &quinn::Connection, frame: &Frame, bytes: &bytes::Bytes) -> bool {
    let fits = conn
        .max_datagram_size()
        .is_some_and(|max| bytes.len() <= max);
    if !(frame.kind().prefers_datagram() && fits) {
        return false;
    }
    match conn.send_datagram(bytes.clone()) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(error = %e, "datagram refused; using the stream");
            false
        }
    }
}

/// Why [`write_frame`] could not send a frame: the session is over.
#[cfg(feature = "quinn")]
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The stream or connection failed.
    #[error("write failed: {0}")]
    Failed(#[from] quinn::WriteError),
    /// A byte stream (TLS over TCP) failed.
    #[error("write failed: {0}")]
    Io(#[from] std::io::Error),
    /// The peer did not take the bytes within the write timeout (flow control stalled).
    #[error("write timed out")]
    TimedOut,
}

/// Writes one frame the way both ends do: in a datagram when its kind prefers one and
/// it fits ([`send_as_datagram`]), otherwise on the session stream, giving up after
/// `write_timeout` without progress (a peer that stops reading cannot hold a session).
#[cfg(feature = "quinn")]
pub async fn write_frame(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    frame: &Frame,
    flags: u8,
    write_timeout: std::time::Duration,
) -> Result<(), WriteError> {
    let bytes = frame.to_bytes(flags);
    if send_as_datagram(conn, frame, &bytes) {
        return Ok(());
    }
    write_stream(send, &bytes, write_timeout).await
}

/// Writes encoded bytes on a stream, with the same timeout rule as [`write_frame`].
#[cfg(feature = "quinn")]
pub async fn write_stream(
    send: &mut quinn::SendStream,
    bytes: &[u8],
    write_timeout: std::time::Duration,
) -> Result<(), WriteError> {
    match tokio::time::timeout(write_timeout, send.write_all(bytes)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(WriteError::TimedOut),
    }
}

/// QUIC's congestion controller, the same choice on both ends (a client and a server
/// each control what they send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// BBR (the default): paces to the measured bottleneck bandwidth and RTT and does not
    /// read random loss as congestion. On a weak mobile path most loss is random; CUBIC
    /// halves its window on each loss and at 50 % loss sits at its two-packet minimum,
    /// where sends queue behind it (docs/bench/analysis.md, "The uplink under loss").
    /// quinn's BBR is marked experimental by its authors: `Cubic` is one setting away.
    #[default]
    Bbr,
    /// CUBIC, quinn's own default (loss-based).
    Cubic,
}

impl Congestion {
    /// The setting's name: `bbr` or `cubic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Congestion::Bbr => "bbr",
            Congestion::Cubic => "cubic",
        }
    }
}

/// Puts `congestion` into a QUIC transport configuration.
#[cfg(feature = "quinn")]
pub fn set_congestion(transport: &mut quinn::TransportConfig, congestion: Congestion) {
    match congestion {
        Congestion::Bbr => transport.congestion_controller_factory(std::sync::Arc::new(
            quinn::congestion::BbrConfig::default(),
        )),
        Congestion::Cubic => transport.congestion_controller_factory(std::sync::Arc::new(
            quinn::congestion::CubicConfig::default(),
        )),
    };
}

/// The TLS 1.3 client configuration of a Tern client over QUIC: ring, TLS 1.3 only,
/// ALPN [`crate::ALPN`], trusting `roots`. Transport settings are the caller's.
#[cfg(feature = "quinn")]
pub fn client_config(roots: rustls::RootCertStore) -> Result<quinn::ClientConfig, String> {
    let crypto = tls_client_config(roots)?;
    let quic =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(std::sync::Arc::new(quic)))
}

/// The TLS 1.3 client configuration of a Tern client, for QUIC and for TLS over TCP
/// alike: ring, TLS 1.3 only, ALPN [`crate::ALPN`], trusting `roots`.
#[cfg(feature = "quinn")]
pub fn tls_client_config(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![crate::ALPN.to_vec()];
    Ok(crypto)
}

/// Socket buffer size Tern asks for on its UDP sockets (the kernel may cap it, e.g. at
/// `net.core.rmem_max`).
pub const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Binds a UDP socket for a QUIC endpoint with receive and send buffers of `buffer`
/// bytes. Linux defaults to about 208 KB, which a burst of handshakes (a reconnect
/// storm after a network flap) overflows: the kernel drops the packets and every
/// dropped Initial costs its client a handshake timeout. Returns the socket and the
/// receive buffer size the kernel granted.
pub fn udp_socket(
    addr: std::net::SocketAddr,
    buffer: usize,
) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer still works, it just drops more under bursts.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    Ok((socket.into(), granted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    #[tokio::test]
    async fn reads_frames_then_clean_end_or_truncation() {
        let mut bytes = Frame::Heartbeat(pb::Heartbeat {
            interval_ms: 1,
            ..Default::default()
        })
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

    #[tokio::test]
    async fn chunk_pump_reassembles_split_frames_and_reports_truncation() {
        let hb = Frame::Heartbeat(pb::Heartbeat {
            interval_ms: 1,
            ..Default::default()
        })
        .to_bytes(0);
        let mut bytes = hb.to_vec();
        bytes.extend_from_slice(&hb);
        bytes.extend_from_slice(&hb[..2]); // a frame cut short by the end of the stream
        // Chunks of 3 bytes: every frame arrives split.
        let chunks: std::collections::VecDeque<bytes::Bytes> =
            bytes.chunks(3).map(bytes::Bytes::copy_from_slice).collect();
        let next = |mut q: std::collections::VecDeque<bytes::Bytes>| async move {
            let c = q.pop_front();
            (q, Ok(c))
        };
        let (tx, mut rx) = mpsc::channel(8);
        pump_chunks(chunks, next, BytesMut::new(), 100, tx).await;
        for _ in 0..2 {
            match rx.recv().await {
                Some(Inbound::Frame(f)) => assert!(matches!(*f, Frame::Heartbeat(_))),
                other => panic!("expected a heartbeat, got {other:?}"),
            }
        }
        match rx.recv().await {
            Some(Inbound::Closed(why)) => assert!(why.contains("inside a frame"), "{why}"),
            other => panic!("expected Closed, got {other:?}"),
        }
    }
}
