//! A minimal load-generating client that speaks the wire protocol directly.
//!
//! The benchmarks need thousands of logged-in users in one process; `tern-client`
//! (its own runtime, SQLite store and event thread per user) is the right thing for an
//! app and the wrong thing for 50,000 simulated users. A [`RawClient`] is one QUIC
//! connection with the session stream, a writer task and a reader task: it logs in,
//! sends `ChatMessage`s on the stream, and acknowledges every `Push` the way the real
//! client does (a `DeliveryAck` datagram carrying the seq and the contiguous cursor),
//! reporting each first arrival to a [`Sink`]. Benchmarks that measure the client
//! stack itself (loss, wire bytes, catch-up) use `tern-client` instead.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use rustls::pki_types::CertificateDer;
use tern_client::sync::MAX_PUSHES_TOGETHER;
use tern_protocol::frame::{DEFAULT_MAX_FRAME_BODY, Frame};
use tern_protocol::io::{Inbound, read_frame, spawn_session_readers};
use tern_protocol::pb::timeline_entry::Body;
use tern_protocol::{ClientMsgId, pb};
use tokio::sync::mpsc;

/// Receives what a raw client sees.
pub(crate) trait Sink: Send + Sync + 'static {
    /// First arrival of a timeline entry carrying a message (receipts are acknowledged
    /// but not reported).
    fn on_message(&self, _client: usize, _message: &pb::StoredMessage) {}
    /// The server answered a send.
    fn on_send_result(&self, _client: usize, _result: &pb::SendResult) {}
}

/// A sink that ignores everything.
pub(crate) struct Ignore;
impl Sink for Ignore {}

/// The instant all benchmark timestamps are relative to.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A 20-byte body whose first 8 bytes are the send time (ns since [`epoch`]).
pub(crate) fn timed_body() -> Vec<u8> {
    let mut body = (epoch().elapsed().as_nanos() as u64).to_le_bytes().to_vec();
    body.resize(20, b'.');
    body
}

/// Send-to-now time of a body made by [`timed_body`].
pub(crate) fn age_of(body: &[u8]) -> Option<Duration> {
    let sent = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    Some(epoch().elapsed().saturating_sub(Duration::from_nanos(sent)))
}

/// A client endpoint trusting `cert`, with a long idle timeout (idle sessions must not
/// be closed by QUIC while a benchmark holds them).
pub(crate) fn endpoint(cert: &CertificateDer<'static>) -> anyhow::Result<quinn::Endpoint> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(
        600,
    ))?));
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    let mut config = tern_protocol::io::client_config(roots).map_err(|e| anyhow::anyhow!(e))?;
    config.transport_config(Arc::new(transport));
    let (socket, _) =
        tern_protocol::io::udp_socket("127.0.0.1:0".parse()?, tern_protocol::io::UDP_BUFFER_BYTES)?;
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// `n` (at least one) client endpoints trusting `cert`: load is spread over several UDP
/// sockets, as it would come from many hosts.
pub(crate) fn endpoints(
    cert: &CertificateDer<'static>,
    n: usize,
) -> anyhow::Result<Vec<quinn::Endpoint>> {
    (0..n.max(1)).map(|_| endpoint(cert)).collect()
}

/// A dev-mode login token for `user`.
pub(crate) fn token(user: &str) -> String {
    tern_server::auth::mint(
        tern_server::config::DEV_TOKEN_SECRET.as_bytes(),
        user,
        None,
        24 * 3600,
    )
}

/// One logged-in session.
pub(crate) struct RawClient {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    writer: mpsc::UnboundedSender<Bytes>,
}

impl RawClient {
    /// Connects, logs in as `user`, and starts the reader and writer tasks.
    pub(crate) async fn login(
        endpoint: &quinn::Endpoint,
        server: SocketAddr,
        user: &str,
        index: usize,
        sink: Arc<dyn Sink>,
    ) -> anyhow::Result<RawClient> {
        let conn = endpoint
            .connect(server, "localhost")?
            .await
            .context("handshake")?;
        let (mut send, mut recv) = conn.open_bi().await?;
        let login = Frame::Login(pb::Login {
            user_id: user.into(),
            token: token(user),
            device_id: format!("{user}-bench"),
            platform: pb::Platform::Desktop as i32,
            client_version: "1.0.0".into(),
            inbox_cursor: 0,
        });
        send.write_all(&login.to_bytes(0)).await?;
        let mut buf = BytesMut::new();
        match read_frame(&mut recv, &mut buf, DEFAULT_MAX_FRAME_BODY).await? {
            Some((_, Frame::LoginResult(r))) if r.code == pb::ErrorCode::Ok as i32 => {}
            other => bail!("login of {user} refused: {other:?}"),
        }
        let (in_tx, in_rx) = mpsc::channel(1024);
        spawn_session_readers(conn.clone(), recv, buf, DEFAULT_MAX_FRAME_BODY, in_tx);
        let (writer, mut out) = mpsc::unbounded_channel::<Bytes>();
        tokio::spawn(async move {
            while let Some(bytes) = out.recv().await {
                if send.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(dispatch(conn.clone(), in_rx, index, sink));
        Ok(RawClient { conn, writer })
    }

    /// Queues a text message to user `to` (written by the writer task, in order).
    pub(crate) fn send(&self, to: &str, body: Vec<u8>) {
        self.send_to(pb::ConversationKind::Direct, to, body);
    }

    /// Queues a text message to a user or group.
    pub(crate) fn send_to(&self, kind: pb::ConversationKind, to: &str, body: Vec<u8>) {
        let frame = Frame::Chat(pb::ChatMessage {
            kind: kind as i32,
            client_msg_id: Bytes::copy_from_slice(
                &ClientMsgId::generate(tern_protocol::unix_ms(), &mut rand::rng()).0,
            ),
            recipient: to.into(),
            body: body.into(),
            client_ts_ms: tern_protocol::unix_ms(),
            send_seq: 0,
            ..Default::default()
        });
        let _ = self.writer.send(frame.to_bytes(0));
    }

    /// Asks for the user's large groups (`LogsRequest`; the answer is ignored): in a
    /// cluster the node then receives those groups' log entries.
    pub(crate) fn request_logs(&self) {
        let frame = Frame::LogsRequest(pb::LogsRequest { request_id: 1 });
        let _ = self.writer.send(frame.to_bytes(0));
    }

    /// Closes the connection.
    pub(crate) fn close(&self) {
        self.conn.close(0u32.into(), b"bench done");
    }
}

/// Handles what arrives: acknowledges pushes (the contiguous cursor plus the seqs above
/// it, one ACK for the pushes that arrived together, as the real client does), reports
/// first arrivals and send results.
async fn dispatch(
    conn: quinn::Connection,
    mut rx: mpsc::Receiver<Inbound>,
    index: usize,
    sink: Arc<dyn Sink>,
) {
    let mut cursor = 0u64;
    let mut held = BTreeSet::new();
    let mut hold = |seq: u64, cursor: &mut u64| -> bool {
        if seq <= *cursor || !held.insert(seq) {
            return false;
        }
        while held.remove(&(*cursor + 1)) {
            *cursor += 1;
        }
        true
    };
    let mut acked: Vec<u64> = Vec::new();
    while let Some(event) = rx.recv().await {
        // Frames already waiting are handled with this one and their pushes acknowledged
        // in one `DeliveryAck`, as the real client does (`MAX_PUSHES_TOGETHER`).
        let mut events = vec![event];
        while events.len() < MAX_PUSHES_TOGETHER {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => break,
            }
        }
        for event in events {
            let (Inbound::Frame(frame) | Inbound::Datagram(frame)) = event else {
                return;
            };
            match *frame {
                Frame::Push(p) if !p.log.is_empty() => {
                    // A large group's log entry: settle it (no per-log cursor kept here).
                    let Some(entry) = p.entry else { continue };
                    let ack = Frame::DeliveryAck(pb::DeliveryAck {
                        seqs: vec![entry.seq],
                        log: p.log,
                        ..Default::default()
                    });
                    let _ = conn.send_datagram(ack.to_bytes(0));
                    if let Some(Body::Message(m)) = &entry.body {
                        sink.on_message(index, m);
                    }
                }
                Frame::Push(p) => {
                    let Some(entry) = p.entry else { continue };
                    let first = hold(entry.seq, &mut cursor);
                    acked.push(entry.seq);
                    if let (true, Some(Body::Message(m))) = (first, &entry.body) {
                        sink.on_message(index, m);
                    }
                }
                Frame::SendResult(r) => {
                    // The sender's own copy takes a seq in its timeline; it is never
                    // pushed to this session, so it counts as held.
                    if r.seq > 0 {
                        hold(r.seq, &mut cursor);
                    }
                    sink.on_send_result(index, &r);
                }
                _ => {}
            }
        }
        if !acked.is_empty() {
            acked.retain(|s| *s > cursor);
            let ack = Frame::DeliveryAck(pb::DeliveryAck {
                cumulative_seq: cursor,
                seqs: std::mem::take(&mut acked),
                ..Default::default()
            });
            let _ = conn.send_datagram(ack.to_bytes(0));
        }
    }
}

/// Logs in users `first..first + n` (named by `name`) with at most `concurrency`
/// handshakes in flight, spread over `endpoints`; the progress bar counts logins.
/// Returns the clients in index order and the time the logins took.
pub(crate) async fn login_many(
    endpoints: &[quinn::Endpoint],
    server: SocketAddr,
    name: impl Fn(usize) -> String,
    range: std::ops::Range<usize>,
    concurrency: usize,
    sink: Arc<dyn Sink>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(Vec<RawClient>, Duration)> {
    login_many_to(
        endpoints,
        &[server],
        name,
        range,
        concurrency,
        sink,
        progress,
    )
    .await
}

/// Like [`login_many`], client `i` logging in to `servers[i % servers.len()]` (the
/// nodes of a cluster).
pub(crate) async fn login_many_to(
    endpoints: &[quinn::Endpoint],
    servers: &[SocketAddr],
    name: impl Fn(usize) -> String,
    range: std::ops::Range<usize>,
    concurrency: usize,
    sink: Arc<dyn Sink>,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(Vec<RawClient>, Duration)> {
    use futures_util::StreamExt;
    let started = Instant::now();
    let mut out: Vec<(usize, RawClient)> = futures_util::stream::iter(range)
        .map(|i| {
            let (endpoint, user, sink) = (&endpoints[i % endpoints.len()], name(i), sink.clone());
            let server = servers[i % servers.len()];
            async move {
                let mut tries = 0;
                loop {
                    match RawClient::login(endpoint, server, &user, i, sink.clone()).await {
                        Ok(c) => return Ok::<_, anyhow::Error>((i, c)),
                        // A server at its login limit answers SERVER_BUSY: back off, retry.
                        Err(e) if tries < 20 => {
                            tries += 1;
                            tracing::debug!(%user, error = %e, "login retry");
                            tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .inspect(|_| progress.inc(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let took = started.elapsed();
    out.sort_by_key(|(i, _)| *i);
    Ok((out.into_iter().map(|(_, c)| c).collect(), took))
}
