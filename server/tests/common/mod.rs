//! Test harness: an in-process server on ephemeral loopback ports, and a minimal
//! client that speaks the wire protocol directly (no client-core), so tests can send
//! exactly the frames — good or bad — they mean to.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::BytesMut;
use rustls::pki_types::CertificateDer;
use tern_protocol::frame::Frame;
use tern_protocol::io::read_frame;
use tern_protocol::{ClientMsgId, pb};
use tern_server::config::{Config, DEV_API_KEY, DEV_TOKEN_SECRET};
use tern_server::server::{ServerHandle, start};

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub handle: ServerHandle,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::dev_loopback(dir.path());
        tweak(&mut config);
        let handle = start(config).await.expect("server starts");
        TestServer { handle, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.quic_addr
    }

    pub fn cert(&self) -> CertificateDer<'static> {
        self.handle.cert_der.clone()
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.handle.http_addr, path)
    }

    pub async fn login(&self, user: &str, device: &str) -> TestClient {
        let (c, r) = TestClient::login(
            self.addr(),
            self.cert(),
            user,
            device,
            pb::Platform::Android,
        )
        .await;
        assert_eq!(r.code, pb::ErrorCode::Ok as i32, "login of {user}: {r:?}");
        c
    }
}

pub fn token(user: &str) -> String {
    tern_server::auth::mint(DEV_TOKEN_SECRET.as_bytes(), user, None, 3600)
}

pub fn api() -> reqwest::Client {
    reqwest::Client::new()
}

pub fn bearer() -> String {
    format!("Bearer {DEV_API_KEY}")
}

pub struct TestClient {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    buf: BytesMut,
    n: u64,
    /// Frames that arrived in a datagram and were not handed out yet.
    queued: std::collections::VecDeque<Frame>,
}

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

    pub async fn send(&mut self, frame: Frame) {
        self.send_raw(&frame.to_bytes(0)).await;
    }

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

    pub async fn send_result(&mut self) -> pb::SendResult {
        match self.recv_until(|f| matches!(f, Frame::SendResult(_))).await {
            Frame::SendResult(r) => r,
            _ => unreachable!(),
        }
    }

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

pub fn chat_frame(id: ClientMsgId, to: &str, text: &str) -> Frame {
    Frame::Chat(pb::ChatMessage {
        client_msg_id: bytes::Bytes::copy_from_slice(&id.0),
        sender: String::new(),
        recipient: to.into(),
        kind: pb::ConversationKind::Direct as i32,
        content_type: 0,
        body: bytes::Bytes::copy_from_slice(text.as_bytes()),
        client_ts_ms: 0,
    })
}

pub fn text_of(entry: &pb::TimelineEntry) -> String {
    match &entry.body {
        Some(pb::timeline_entry::Body::Message(m)) => String::from_utf8(m.body.to_vec()).unwrap(),
        other => panic!("not a message: {other:?}"),
    }
}

/// A `tern-server --dev` child process (for tests that kill it).
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    pub cert: CertificateDer<'static>,
    pub cert_pem: Vec<u8>,
}

/// Starts the server binary on `quic` with data in `data`; returns once it listens.
pub fn spawn_server(data: &Path, quic: &str) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern-server"))
        .args([
            "--dev",
            "--quic",
            quic,
            "--http",
            "127.0.0.1:0",
            "--rate-per-sec",
            "100000",
            "--rate-burst",
            "100000",
        ])
        .arg("--data")
        .arg(data)
        .env(
            "RUST_LOG",
            std::env::var("TERN_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn tern-server");
    let stdout = child.stdout.take().unwrap();
    let mut addr = None;
    let mut cert_path = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("quic listening on ") {
            addr = Some(a.parse().unwrap());
        }
        if let Some(p) = line.strip_prefix("dev certificate: ") {
            cert_path = Some(p.to_owned());
            break;
        }
    }
    // Keep draining stdout so the server never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let pem = std::fs::read(cert_path.expect("server printed its certificate path")).unwrap();
    let cert = rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap()
        .unwrap();
    Proc {
        child,
        addr: addr.expect("server printed its address"),
        cert,
        cert_pem: pem,
    }
}
