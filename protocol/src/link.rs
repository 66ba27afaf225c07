//! The connection under a session, whatever carries it (feature `quinn`).
//!
//! Tern speaks QUIC first: QoS frames (pushes, ACKs, sends and their results) in
//! datagrams, everything else on one session stream. Where UDP is blocked it speaks the
//! same frames over a reliable byte stream (TLS 1.3 over TCP): there every frame goes on
//! the stream, and the application QoS tracks ACKs but does not retransmit (the stream
//! does). A [`Link`] is either; server and client sessions write through it, so one
//! session logic serves every transport.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::frame::Frame;
use crate::io::{Inbound, WriteError, pump_chunks, send_as_datagram, spawn_session_readers};

/// Which transport a session runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP.
    Tcp,
    /// WebSocket (binary messages) over TLS: through HTTP proxies, and for browsers.
    WebSocket,
}

impl Transport {
    /// Lower-case name, for logs, metrics and diagnostics.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::Tcp => "tcp",
            Transport::WebSocket => "ws",
        }
    }
}

/// The write half of a reliable byte stream.
pub type StreamWriter = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// The write side of a session's connection (the read side: [`crate::input::Input`],
/// or reader tasks, [`Link::spawn_readers`]).
pub enum Link {
    /// QUIC: datagrams and the session stream.
    Quic {
        /// The connection.
        conn: quinn::Connection,
        /// The session stream, send side.
        send: quinn::SendStream,
    },
    /// A reliable byte stream only.
    Stream {
        /// Which transport the stream is.
        transport: Transport,
        /// The write half.
        send: StreamWriter,
        /// The peer's address.
        remote: SocketAddr,
    },
}

impl Link {
    /// The transport.
    pub fn transport(&self) -> Transport {
        match self {
            Link::Quic { .. } => Transport::Quic,
            Link::Stream { transport, .. } => *transport,
        }
    }

    /// Whether datagrams exist on this link (QUIC): QoS retransmits only there.
    pub fn has_datagrams(&self) -> bool {
        matches!(self, Link::Quic { .. })
    }

    /// The peer's address as this end sees it.
    pub fn remote_address(&self) -> SocketAddr {
        match self {
            Link::Quic { conn, .. } => conn.remote_address(),
            Link::Stream { remote, .. } => *remote,
        }
    }

    /// The largest datagram the link can send now (`None`: no datagrams).
    pub fn max_datagram_size(&self) -> Option<usize> {
        match self {
            Link::Quic { conn, .. } => conn.max_datagram_size(),
            Link::Stream { .. } => None,
        }
    }

    /// QUIC's smoothed RTT of the path (`None` on a byte stream).
    pub fn rtt(&self) -> Option<Duration> {
        match self {
            Link::Quic { conn, .. } => Some(conn.rtt()),
            Link::Stream { .. } => None,
        }
    }

    /// A sample of the path for [`LossMeter`](crate::redundancy::LossMeter); `None` on
    /// a byte stream (no datagrams to copy there).
    pub fn path_sample(&self) -> Option<crate::redundancy::PathSample> {
        match self {
            Link::Quic { conn, .. } => Some(crate::redundancy::PathSample::of(conn)),
            Link::Stream { .. } => None,
        }
    }

    /// Sends `bytes` as one datagram; `false` if there are no datagrams or it was refused.
    pub fn send_datagram(&self, bytes: Bytes) -> bool {
        match self {
            Link::Quic { conn, .. } => conn.send_datagram(bytes).is_ok(),
            Link::Stream { .. } => false,
        }
    }

    /// Writes encoded frames on the stream, waiting at most `write_timeout`.
    pub async fn write_stream(
        &mut self,
        bytes: &[u8],
        write_timeout: Duration,
    ) -> Result<(), WriteError> {
        let write = async {
            match self {
                Link::Quic { send, .. } => send.write_all(bytes).await.map_err(WriteError::from),
                Link::Stream { send, .. } => {
                    send.write_all(bytes).await?;
                    send.flush().await.map_err(WriteError::from)
                }
            }
        };
        match tokio::time::timeout(write_timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(WriteError::TimedOut),
        }
    }

    /// Sends a frame: in a datagram when its kind prefers one and it fits, otherwise on
    /// the stream.
    pub async fn write_frame(
        &mut self,
        frame: &Frame,
        flags: u8,
        write_timeout: Duration,
    ) -> Result<(), WriteError> {
        let bytes = frame.to_bytes(flags);
        if let Link::Quic { conn, .. } = self {
            if send_as_datagram(conn, frame, &bytes) {
                return Ok(());
            }
        }
        self.write_stream(&bytes, write_timeout).await
    }

    /// Ends the session stream cleanly (what was written is still delivered).
    pub async fn finish(&mut self) {
        match self {
            Link::Quic { send, .. } => {
                let _ = send.finish();
            }
            Link::Stream { send, .. } => {
                let _ = tokio::time::timeout(Duration::from_secs(1), send.shutdown()).await;
            }
        }
    }

    /// Waits (at most `wait`) for the peer to close after [`Link::finish`].
    pub async fn closed(&self, wait: Duration) {
        if let Link::Quic { conn, .. } = self {
            let _ = tokio::time::timeout(wait, conn.closed()).await;
        }
    }

    /// Closes the connection with an application `code` and `reason`. A stream link
    /// has no close frame: finish it first (then dropping it closes the socket).
    pub fn close(&self, code: u32, reason: &[u8]) {
        if let Link::Quic { conn, .. } = self {
            conn.close(quinn::VarInt::from_u32(code), reason);
        }
    }

    /// Starts the reader tasks of the session: the stream (`buf` holds bytes already
    /// read past the login frame) and, on QUIC, the datagrams; both feed `tx`. For a
    /// stream link `recv` is its read half.
    pub fn spawn_readers(
        &self,
        recv: Reader,
        buf: BytesMut,
        max_body: usize,
        tx: mpsc::Sender<Inbound>,
    ) {
        match (self, recv) {
            (Link::Quic { conn, .. }, Reader::Quic(recv)) => {
                spawn_session_readers(conn.clone(), recv, buf, max_body, tx)
            }
            (_, Reader::Stream(read)) => spawn_stream_reader(read, buf, max_body, tx),
            (Link::Stream { .. }, Reader::Quic(_)) => {
                unreachable!("a stream link is read from its stream")
            }
        }
    }
}

/// The read side of a session's connection.
pub enum Reader {
    /// The QUIC session stream's receive side.
    Quic(quinn::RecvStream),
    /// The read half of a byte stream.
    Stream(Box<dyn AsyncRead + Send + Sync + Unpin>),
}

/// Starts a task reading frames from a byte stream into `tx` (see
/// [`pump_chunks`]: nothing is buffered between frames).
pub fn spawn_stream_reader(
    read: Box<dyn AsyncRead + Send + Sync + Unpin>,
    buf: BytesMut,
    max_body: usize,
    tx: mpsc::Sender<Inbound>,
) {
    let next = |mut r: Box<dyn AsyncRead + Send + Sync + Unpin>| async move {
        let mut chunk = BytesMut::with_capacity(16 * 1024);
        let got = match r.read_buf(&mut chunk).await {
            Ok(0) => Ok(None),
            Ok(_) => Ok(Some(chunk.freeze())),
            Err(e) => Err(format!("read failed: {e}")),
        };
        (r, got)
    };
    tokio::spawn(pump_chunks(read, next, buf, max_body, tx));
}

/// Tern frames over WebSocket (feature `websocket`): the socket's binary messages,
/// in order, are the session's byte stream (a message holds whole frames; a reader
/// does not depend on where messages end). Returns the read and write halves of that
/// byte stream, for [`Link::Stream`] and [`Reader::Stream`]; two small tasks move
/// bytes between them and the socket. Messages are limited to
/// [`WEBSOCKET_MAX_MESSAGE`] bytes.
#[cfg(feature = "websocket")]
pub fn websocket_stream<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
) -> (Box<dyn AsyncRead + Send + Sync + Unpin>, StreamWriter)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (app, pump) = tokio::io::duplex(64 * 1024);
    let (mut from_app, mut to_app) = tokio::io::split(pump);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8 * 1024];
        loop {
            match from_app.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = sink.close().await;
                    break;
                }
                Ok(n) => {
                    let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                Message::Binary(b) if to_app.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                // Pings are answered by the socket itself; text is not Tern.
                _ => {}
            }
        }
        let _ = to_app.shutdown().await;
    });
    let (read, write) = tokio::io::split(app);
    (Box::new(read), Box::new(write))
}

/// Largest WebSocket message either end accepts: one largest frame and its prefix.
#[cfg(feature = "websocket")]
pub const WEBSOCKET_MAX_MESSAGE: usize = 320 * 1024;

/// The WebSocket settings both ends use (message and frame limits).
#[cfg(feature = "websocket")]
pub fn websocket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    // Small buffers: an idle session holds them (the default read buffer is 128 KiB).
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(WEBSOCKET_MAX_MESSAGE))
        .max_frame_size(Some(WEBSOCKET_MAX_MESSAGE))
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
}
