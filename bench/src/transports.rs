//! Benchmark: the transports side by side, on loopback, against one server process.
//!
//! * **Time to log in and to the first message** with the client core in automatic
//!   mode: on an open network (QUIC wins), and with UDP blocked (QUIC toward a socket
//!   that answers nothing; TLS over TCP starts after the 300 ms head start). The
//!   message is timed from `send_text` to the receiver storing it.
//! * **Messages per second** from one raw sender pipelining sends on its session stream
//!   over QUIC, TLS over TCP and WebSocket (the same frames, the same server).
//! * **Server memory per idle session** on each transport: RSS growth over `sessions`
//!   raw logged-in connections, divided by them.
//!
//! Loss is not measured here: on TCP it needs real packet loss (nftables in a network
//! namespace; tern-netsim's TCP relay delays, stalls and cuts but cannot drop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use tern_protocol::frame::Frame;
use tern_protocol::io::read_frame;
use tern_protocol::{ClientMsgId, pb};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::serverproc::ServerProc;

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Logins timed per network (open, UDP blocked).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Messages the sender pipelines per transport.
    #[arg(long, default_value_t = 5_000)]
    pub messages: usize,
    /// Idle sessions per transport for the memory figure.
    #[arg(long, default_value_t = 1_000)]
    pub sessions: usize,
}

/// One transport's figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Row {
    /// `quic`, `tcp` or `ws`.
    pub transport: String,
    /// Pipelined sends answered per second.
    pub msgs_per_sec: f64,
    /// Server RSS growth per idle session, bytes.
    pub bytes_per_idle_session: f64,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Median ms from login to connected, open network (QUIC).
    pub login_open_ms: f64,
    /// Median ms from login to connected, UDP blocked (TCP after the head start).
    pub login_udp_blocked_ms: f64,
    /// Median ms from `send_text` to the receiver storing it, open network.
    pub first_message_open_ms: f64,
    /// Same, UDP blocked.
    pub first_message_udp_blocked_ms: f64,
    /// Per transport.
    pub rows: Vec<Row>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let server = ServerProc::start(&["--max-sessions", "100000"])?;
    let (login_open, first_open) = logins(&server, args.runs, false).await?;
    let (login_blocked, first_blocked) = logins(&server, args.runs, true).await?;
    let mut rows = vec![];
    for t in ["quic", "tcp", "ws"] {
        let msgs_per_sec = throughput(&server, t, args.messages).await?;
        // A fresh server per transport: memory freed by one run is not reused by the next.
        let fresh = ServerProc::start(&["--max-sessions", "100000"])?;
        let bytes_per_idle_session = idle_memory(&fresh, t, args.sessions).await?;
        rows.push(Row {
            transport: t.into(),
            msgs_per_sec,
            bytes_per_idle_session,
        });
    }
    Ok(Report {
        login_open_ms: median(login_open),
        login_udp_blocked_ms: median(login_blocked),
        first_message_open_ms: median(first_open),
        first_message_udp_blocked_ms: median(first_blocked),
        rows,
    })
}

/// `runs` fresh client-core logins (and one message each to a receiver).
async fn logins(
    server: &ServerProc,
    runs: usize,
    udp_blocked: bool,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let dir = tempfile::tempdir()?;
    let pem = server.cert_pem();
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let client = |user: &str, device: &str, blocked: bool| {
        let quic = if blocked {
            black_hole.local_addr().expect("bound").to_string()
        } else {
            server.addr.to_string()
        };
        let mut c = tern_client::ClientConfig::new(quic, dir.path().join(device), device);
        c.ca_pem = Some(pem.clone());
        c.tcp_server = server.tcp.map(|a| a.to_string());
        let client = tern_client::Client::new(c).expect("client");
        let token = tern_server::auth::mint(
            tern_server::config::DEV_TOKEN_SECRET.as_bytes(),
            user,
            None,
            86_400,
        );
        (client, token)
    };
    let tag = if udp_blocked { "blocked" } else { "open" };
    let (bob, token) = client(&format!("rx-{tag}"), &format!("rx-{tag}"), false);
    bob.login(&format!("rx-{tag}"), &token)?;
    bob.wait_for_state(Duration::from_secs(10), |s| {
        *s == tern_client::ConnectionState::Connected
    })
    .await;
    let (mut login_ms, mut first_ms) = (vec![], vec![]);
    for i in 0..runs {
        let user = format!("tx-{tag}-{i}");
        let (c, token) = client(&user, &user, udp_blocked);
        let t = Instant::now();
        c.login(&user, &token)?;
        c.wait_for_state(Duration::from_secs(10), |s| {
            *s == tern_client::ConnectionState::Connected
        })
        .await
        .ok_or_else(|| anyhow::anyhow!("login timed out"))?;
        login_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        c.send_text(&format!("rx-{tag}"), "first")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while bob
            .messages(tern_client::ConversationKind::Direct, &user, None, 1)?
            .is_empty()
        {
            anyhow::ensure!(Instant::now() < deadline, "first message not received");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        first_ms.push(t.elapsed().as_secs_f64() * 1e3);
        c.shutdown();
    }
    bob.shutdown();
    Ok((login_ms, first_ms))
}

/// A byte stream to the server on transport `t`, with a completed login as `user`.
async fn session(
    server: &ServerProc,
    endpoint: &quinn::Endpoint,
    t: &str,
    user: &str,
) -> anyhow::Result<(
    Box<dyn AsyncRead + Send + Unpin>,
    Box<dyn AsyncWrite + Send + Unpin>,
)> {
    let (mut r, mut w): (
        Box<dyn AsyncRead + Send + Unpin>,
        Box<dyn AsyncWrite + Send + Unpin>,
    ) = match t {
        "quic" => {
            let conn = endpoint.connect(server.addr, "localhost")?.await?;
            let (send, recv) = conn.open_bi().await?;
            (Box::new(recv), Box::new(send))
        }
        "tcp" => {
            let tls = tls_connect(
                server.tcp.expect("dev tcp"),
                &server.cert,
                tern_protocol::ALPN,
            )
            .await?;
            let (r, w) = tokio::io::split(tls);
            (Box::new(r), Box::new(w))
        }
        _ => {
            let tls = tls_connect(server.ws.expect("dev ws"), &server.cert, b"http/1.1").await?;
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                "wss://localhost/tern",
                tls,
                Some(tern_protocol::link::websocket_config()),
            )
            .await?;
            let (r, w) = tern_protocol::link::websocket_stream(ws);
            (r, w)
        }
    };
    let token = tern_server::auth::mint(
        tern_server::config::DEV_TOKEN_SECRET.as_bytes(),
        user,
        None,
        86_400,
    );
    let login = Frame::Login(pb::Login {
        user_id: user.into(),
        token,
        device_id: "bench".into(),
        platform: pb::Platform::Desktop as i32,
        client_version: "bench".into(),
        inbox_cursor: 0,
    });
    w.write_all(&login.to_bytes(0)).await?;
    w.flush().await?;
    let mut buf = BytesMut::new();
    match read_frame(&mut r, &mut buf, 1 << 20).await? {
        Some((_, Frame::LoginResult(lr))) if lr.code == 0 => Ok((r, w)),
        other => anyhow::bail!("login failed: {other:?}"),
    }
}

async fn tls_connect(
    addr: SocketAddr,
    cert: &CertificateDer<'static>,
    alpn: &[u8],
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let mut tls = tern_protocol::io::tls_client_config(roots).map_err(anyhow::Error::msg)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// One sender pipelines `n` sends; messages answered per second.
async fn throughput(server: &ServerProc, t: &str, n: usize) -> anyhow::Result<f64> {
    let endpoint = crate::raw::endpoint(&server.cert)?;
    let (mut r, mut w) = session(server, &endpoint, t, &format!("tp-{t}")).await?;
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::new();
        let mut answered = 0;
        while answered < n {
            match read_frame(&mut r, &mut buf, 1 << 20).await {
                Ok(Some((_, Frame::SendResult(_)))) => answered += 1,
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        answered
    });
    for i in 0..n {
        let id = ClientMsgId::generate(1_700_000_000_000 + i as u64, &mut rand::rng());
        let chat = Frame::Chat(pb::ChatMessage {
            client_msg_id: bytes::Bytes::copy_from_slice(&id.0),
            recipient: format!("sink-{t}"),
            body: bytes::Bytes::from_static(b"twenty bytes of text"),
            ..Default::default()
        });
        w.write_all(&chat.to_bytes(0)).await?;
    }
    w.flush().await?;
    let answered = reader.await?;
    anyhow::ensure!(answered == n, "{answered} of {n} answered on {t}");
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Server RSS growth per idle logged-in session on transport `t`.
async fn idle_memory(server: &ServerProc, t: &str, sessions: usize) -> anyhow::Result<f64> {
    let endpoint = crate::raw::endpoint(&server.cert)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = server.rss()?;
    let mut held = Vec::with_capacity(sessions);
    for i in 0..sessions {
        held.push(session(server, &endpoint, t, &format!("idle-{t}-{i}")).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss()?;
    drop(held);
    endpoint.close(0u32.into(), b"done");
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(after.saturating_sub(before) as f64 / sessions as f64)
}
