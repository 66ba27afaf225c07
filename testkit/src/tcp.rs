//! A raw protocol client over a byte stream — TLS over TCP, or WebSocket over TLS (the
//! fallback transports): the same frames as [`crate::raw::TestClient`], all on one
//! stream.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, ServerName};
use tern_protocol::frame::Frame;
use tern_protocol::io::read_frame;
use tern_protocol::{ClientMsgId, pb};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::{WAIT, chat_frame};
use crate::token;

/// Which byte-stream transport a [`TcpTestClient`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// TLS over TCP (ALPN `tern/1`).
    Tcp,
    /// WebSocket over TLS (ALPN `http/1.1`), frames in binary messages.
    Ws,
}

/// A raw protocol connection over a byte stream.
pub struct TcpTestClient {
    read: Box<dyn AsyncRead + Send + Sync + Unpin>,
    write: Box<dyn AsyncWrite + Send + Sync + Unpin>,
    buf: BytesMut,
    n: u64,
}

impl TcpTestClient {
    /// Connects (TCP, then TLS 1.3 with ALPN `tern/1`), sending nothing.
    pub async fn connect(addr: SocketAddr, cert: CertificateDer<'static>) -> TcpTestClient {
        TcpTestClient::connect_kind(StreamKind::Tcp, addr, cert).await
    }

    /// Connects over `kind` (for WebSocket: TLS, then the upgrade), sending nothing.
    pub async fn connect_kind(
        kind: StreamKind,
        addr: SocketAddr,
        cert: CertificateDer<'static>,
    ) -> TcpTestClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut tls = tern_protocol::io::tls_client_config(roots).unwrap();
        if kind == StreamKind::Ws {
            tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let tcp = TcpStream::connect(addr).await.expect("TCP connect");
        tcp.set_nodelay(true).unwrap();
        let stream = connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS handshake");
        let (read, write): (
            Box<dyn AsyncRead + Send + Sync + Unpin>,
            Box<dyn AsyncWrite + Send + Sync + Unpin>,
        ) = match kind {
            StreamKind::Tcp => {
                let (r, w) = tokio::io::split(stream);
                (Box::new(r), Box::new(w))
            }
            StreamKind::Ws => {
                let (ws, _) = tokio_tungstenite::client_async_with_config(
                    "wss://localhost/tern",
                    stream,
                    Some(tern_protocol::link::websocket_config()),
                )
                .await
                .expect("WebSocket upgrade");
                tern_protocol::link::websocket_stream(ws)
            }
        };
        TcpTestClient {
            read,
            write,
            buf: BytesMut::new(),
            n: 0,
        }
    }

    /// Connects and logs in as `user` on `device` with a valid dev token.
    pub async fn login(
        addr: SocketAddr,
        cert: CertificateDer<'static>,
        user: &str,
        device: &str,
        platform: pb::Platform,
    ) -> (TcpTestClient, pb::LoginResult) {
        TcpTestClient::login_kind(StreamKind::Tcp, addr, cert, user, device, platform).await
    }

    /// [`TcpTestClient::login`] over `kind`.
    pub async fn login_kind(
        kind: StreamKind,
        addr: SocketAddr,
        cert: CertificateDer<'static>,
        user: &str,
        device: &str,
        platform: pb::Platform,
    ) -> (TcpTestClient, pb::LoginResult) {
        let mut c = TcpTestClient::connect_kind(kind, addr, cert).await;
        c.send(Frame::Login(pb::Login {
            user_id: user.into(),
            token: token(user),
            device_id: device.into(),
            platform: platform as i32,
            client_version: "1.0.0".into(),
            inbox_cursor: 0,
        }))
        .await;
        match c.recv().await {
            Some(Frame::LoginResult(r)) => (c, r),
            other => panic!("expected LoginResult, got {other:?}"),
        }
    }

    /// Sends a frame.
    pub async fn send(&mut self, frame: Frame) {
        let _ = self.write.write_all(&frame.to_bytes(0)).await;
        let _ = self.write.flush().await;
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.write.write_all(bytes).await;
        let _ = self.write.flush().await;
    }

    /// The next frame, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        match tokio::time::timeout(WAIT, read_frame(&mut self.read, &mut self.buf, 1 << 20)).await {
            Ok(Ok(Some((_, f)))) => Some(f),
            Ok(_) => None,
            Err(_) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// The next frame matching `pred`, skipping others.
    pub async fn recv_until(&mut self, mut pred: impl FnMut(&Frame) -> bool) -> Frame {
        loop {
            match self.recv().await {
                Some(f) if pred(&f) => return f,
                Some(_) => continue,
                None => panic!("connection ended while waiting"),
            }
        }
    }

    /// Sends a text to `to`; returns the id used.
    pub async fn chat(&mut self, to: &str, text: &str) -> ClientMsgId {
        self.n += 1;
        let id = ClientMsgId::generate(1_700_000_000_000 + self.n, &mut rand::rng());
        self.send(chat_frame(id, to, text)).await;
        id
    }

    /// The next `SendResult`, skipping other frames.
    pub async fn send_result(&mut self) -> pb::SendResult {
        match self.recv_until(|f| matches!(f, Frame::SendResult(_))).await {
            Frame::SendResult(r) => r,
            _ => unreachable!(),
        }
    }

    /// The next pushed entry, skipping other frames.
    pub async fn push(&mut self) -> pb::TimelineEntry {
        match self.recv_until(|f| matches!(f, Frame::Push(_))).await {
            Frame::Push(p) => p.entry.expect("push has an entry"),
            _ => unreachable!(),
        }
    }
}
