//! A raw protocol client: speaks the wire protocol directly (no client core), so a test
//! can send exactly the frames, good or bad, it means to, and see every frame the
//! server answers, from the stream or a datagram.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use tern_protocol::frame::Frame;
use tern_protocol::io::read_frame;
use tern_protocol::{ClientMsgId, pb};

use crate::token;

/// How long [`TestClient::recv`] waits for a frame.
pub const WAIT: Duration = Duration::from_secs(10);

/// A logged-in (or not) raw protocol connection.
pub struct TestClient {
    /// The client endpoint.
    pub endpoint: quinn::Endpoint,
    /// The connection.
    pub conn: quinn::Connection,
    /// The session stream, send side.
    pub send: quinn::SendStream,
    /// The session stream, receive side.
    pub recv: quinn::RecvStream,
    buf: BytesMut,
    n: u64,
    /// Frames that arrived in a datagram and were not handed out yet.
    queued: std::collections::VecDeque<Frame>,
}

/// A client endpoint on loopback that trusts `cert`.
pub fn client_endpoint(cert: CertificateDer<'static>) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(tern_protocol::io::client_config(roots).unwrap());
    endpoint
}

impl TestClient {
    /// Connects and opens the session stream, sending nothing.
    pub async fn connect(addr: SocketAddr, cert: CertificateDer<'static>) -> TestClient {
        let endpoint = client_endpoint(cert);
        let conn = endpoint
            .connect(addr, "localhost")
            .unwrap()
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.unwrap();
        TestClient {
            endpoint,
            conn,
            send,
            recv,
            buf: BytesMut::new(),
            n: 0,
            queued: Default::default(),
        }
    }

    /// Connects and sends `login`; returns the connection and the answer.
    pub async fn login_with(
        addr: SocketAddr,
        cert: CertificateDer<'static>,
        login: pb::Login,
    ) -> (TestClient, pb::LoginResult) {
        let mut c = TestClient::connect(addr, cert).await;
        c.send(Frame::Login(login)).await;
        match c.recv().await {
            Some(Frame::LoginResult(r)) => (c, r),
            other => panic!("expected LoginResult, got {other:?}"),
        }
    }

    /// Connects and logs in as `user` on `device` with a valid dev token.
    pub async fn login(
        addr: SocketAddr,
        cert: CertificateDer<'static>,
        user: &str,
        device: &str,
        platform: pb::Platform,
    ) -> (TestClient, pb::LoginResult) {
        let login = pb::Login {
            user_id: user.into(),
            token: token(user),
            device_id: device.into(),
            platform: platform as i32,
            client_version: "1.0.0".into(),
            inbox_cursor: 0,
        };
        TestClient::login_with(addr, cert, login).await
    }

    /// Sends a frame on the session stream.
    pub async fn send(&mut self, frame: Frame) {
        self.send_raw(&frame.to_bytes(0)).await;
    }

    /// Sends raw bytes on the session stream.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // A closed stream is visible to the test through `recv`.
        let _ = self.send.write_all(bytes).await;
    }

    /// The next frame from the session stream or a datagram, or None when the server
    /// closed the stream/connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        match self.recv_within(WAIT).await {
            Ok(f) => f,
            Err(()) => panic!("no frame within {WAIT:?}"),
        }
    }

    /// Like `recv`, but `Err` after `wait` instead of panicking.
    pub async fn recv_within(&mut self, wait: std::time::Duration) -> Result<Option<Frame>, ()> {
        if let Some(f) = self.queued.pop_front() {
            return Ok(Some(f));
        }
        let next = async {
            let stream = |r: Result<Option<(tern_protocol::Header, Frame)>, _>| match r {
                Ok(Some((h, f))) => Some(vec![(h, f)]),
                _ => None,
            };
            tokio::select! {
                d = self.conn.read_datagram() => match d {
                    Ok(d) => Some(tern_protocol::io::decode_datagram(&d, 1 << 20).expect("valid datagram")),
                    // The connection is closing: what the stream still holds comes first.
                    Err(_) => stream(read_frame(&mut self.recv, &mut self.buf, 1 << 20).await),
                },
                f = read_frame(&mut self.recv, &mut self.buf, 1 << 20) => stream(f),
            }
        };
        match tokio::time::timeout(wait, next).await {
            Ok(Some(frames)) => {
                self.queued.extend(frames.into_iter().map(|(_, f)| f));
                Ok(self.queued.pop_front())
            }
            Ok(None) => Ok(None),
            Err(_) => Err(()),
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

    /// Waits until the server closes the connection; returns the close.
    pub async fn closed(&self) -> quinn::ConnectionError {
        tokio::time::timeout(WAIT, self.conn.closed())
            .await
            .expect("connection closes")
    }
}

/// A direct text message frame.
pub fn chat_frame(id: ClientMsgId, to: &str, text: &str) -> Frame {
    Frame::Chat(pb::ChatMessage {
        client_msg_id: bytes::Bytes::copy_from_slice(&id.0),
        sender: String::new(),
        recipient: to.into(),
        kind: pb::ConversationKind::Direct as i32,
        content_type: 0,
        body: bytes::Bytes::copy_from_slice(text.as_bytes()),
        client_ts_ms: 0,
        send_seq: 0,
    })
}

/// The text of a message entry (panics on anything else).
pub fn text_of(entry: &pb::TimelineEntry) -> String {
    match &entry.body {
        Some(pb::timeline_entry::Body::Message(m)) => String::from_utf8(m.body.to_vec()).unwrap(),
        other => panic!("not a message: {other:?}"),
    }
}
