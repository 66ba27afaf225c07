//! Wiring: TLS, the QUIC endpoint, the HTTP listener, start-up and graceful shutdown.
//!
//! [`start`] returns a [`ServerHandle`] with the bound addresses, so tests and embedders
//! can run a server on ephemeral ports in-process; the binary is a thin CLI around it.
//!
//! Shutdown ([`ServerHandle::shutdown`]): stop accepting, tell every session
//! `Kickout { SERVER_SHUTDOWN }` (clients reconnect with backoff, to another node if
//! there is one), wait briefly for them to leave, flush the store, close the endpoint,
//! and wait for every task the server started (accept loop, HTTP listener, webhook
//! worker) to end: a broadcast (`watch`) plus waiting, as in mini-redis.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tern_protocol::pb;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::HmacVerifier;
use crate::config::Config;
use crate::registry::SessionCmd;
use crate::session::handle_incoming;
use crate::state::Shared;
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;

/// ALPN protocol id of Tern (defined once, in `tern-protocol`).
pub use tern_protocol::ALPN;

/// The process-wide Prometheus recorder (installed once; `None` if another recorder
/// was installed first by an embedding application).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ];
            let sizes = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 512.0];
            PrometheusBuilder::new()
                .set_buckets(&buckets)
                .ok()?
                .set_buckets_for_metric(Matcher::Full("tern_store_batch_size".into()), &sizes)
                .ok()?
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone()
}

/// Counters and gauges that alerting and the dashboard read (server/deploy/), shown
/// at 0 from the start: a counter that appears only at its first increment makes
/// `increase()` miss that increment, and a missing series cannot be told from a
/// missing node.
fn register_metrics() {
    for name in [
        "tern_messages_in_total",
        "tern_messages_stored_total",
        "tern_messages_duplicate_total",
        "tern_messages_rejected_total",
        "tern_pushes_total",
        "tern_pushes_routed_total",
        "tern_push_retransmissions_total",
        "tern_push_timeouts_waited_total",
        "tern_push_failed_total",
        "tern_pushes_skipped_total",
        "tern_push_queue_full_total",
        "tern_store_busy_total",
        "tern_store_commit_failures_total",
        "tern_store_retries_total",
        "tern_sync_pages_total",
        "tern_rate_limited_total",
        "tern_http_messages_total",
        "tern_http_unauthorized_total",
        "tern_group_ops_total",
        "tern_history_pages_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    metrics::counter!("tern_logins_total", "result" => "OK").increment(0);
    metrics::gauge!("tern_sessions").set(0.0);
    for hook in ["push", "c2s"] {
        metrics::gauge!("tern_webhook_backlog", "hook" => hook).set(0.0);
        metrics::counter!("tern_webhooks_total", "hook" => hook, "result" => "ok").increment(0);
    }
}

/// Certificate chain and key, plus where the certificate is (for clients to trust).
pub struct TlsMaterial {
    /// Certificate chain.
    pub certs: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: PrivateKeyDer<'static>,
    /// The certificate file.
    pub cert_path: PathBuf,
}

fn load_pem(cert_path: &Path, key_path: &Path) -> anyhow::Result<TlsMaterial> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert_path).with_context(|| format!("open {}", cert_path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("parse {}", cert_path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "no certificate in {}",
        cert_path.display()
    );
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key_path).with_context(|| format!("open {}", key_path.display()))?,
    ))
    .with_context(|| format!("parse {}", key_path.display()))?
    .with_context(|| format!("no private key in {}", key_path.display()))?;
    Ok(TlsMaterial {
        certs,
        key,
        cert_path: cert_path.to_owned(),
    })
}

/// Loads the configured certificate, or in dev mode the one in the data directory,
/// generating a self-signed one for localhost on first start.
pub fn tls_material(config: &Config) -> anyhow::Result<TlsMaterial> {
    if let Some((cert, key)) = &config.tls {
        return load_pem(cert, key);
    }
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("create {}", config.data.display()))?;
    let cert_path = config.data.join("dev-cert.pem");
    let key_path = config.data.join("dev-key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let ck = rcgen::generate_simple_self_signed(names).context("generate dev certificate")?;
        std::fs::write(&key_path, ck.signing_key.serialize_pem())?;
        std::fs::write(&cert_path, ck.cert.pem())?;
        tracing::info!(path = %cert_path.display(), "generated self-signed dev certificate");
    }
    load_pem(&cert_path, &key_path)
}

/// Connection receive window before login: room for a Login frame.
pub const PRE_LOGIN_RECEIVE_WINDOW: u32 = 16 * 1024;
/// Stream (and, after login, connection) receive window of a session: one largest frame.
pub const SESSION_RECEIVE_WINDOW: u32 = 320 * 1024;
/// Datagrams received and not yet read, per connection.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;
/// Bytes sent and not yet acknowledged by the client, per connection.
pub const SEND_WINDOW: u64 = 1024 * 1024;

/// The TLS 1.3 server configuration both transports use (QUIC and TLS over TCP): the
/// same certificate, ALPN `tern/1`.
fn tls_config(tls: &TlsMaterial) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(tls.certs.clone(), tls.key.clone_key())
        .context("certificate and key do not match")?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    Ok(crypto)
}

fn quic_config(config: &Config, tls: &TlsMaterial) -> anyhow::Result<quinn::ServerConfig> {
    let crypto = tls_config(tls)?;
    let mut server =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto)?));
    let mut transport = quinn::TransportConfig::default();
    // The session stream is the only stream a client opens; few streams keep the
    // per-connection memory of idle sessions small.
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    // Memory a connection can make the server hold, before and after login (see
    // docs/operations.md, "Limits and abuse"): before login the connection window only
    // lets a Login frame in (login raises it), datagrams wait in a small buffer, and
    // answers a client does not read stop at the send window.
    transport.receive_window(quinn::VarInt::from_u32(PRE_LOGIN_RECEIVE_WINDOW));
    transport.stream_receive_window(quinn::VarInt::from_u32(SESSION_RECEIVE_WINDOW));
    transport.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    transport.send_window(SEND_WINDOW);
    // Heartbeats are the application's business (smart intervals); QUIC must not time
    // out before the session's own heartbeat timeout does.
    let idle = config.heartbeat_timeout + Duration::from_secs(30);
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(idle)?));
    tern_protocol::io::set_congestion(&mut transport, config.congestion.to_protocol());
    server.transport_config(Arc::new(transport));
    server.migration(true);
    Ok(server)
}

/// QUIC endpoint settings that must survive a restart: the stateless-reset key and the
/// connection-ID validation key, both derived from one secret (`quic_reset_key`, else
/// `quic-reset.key` in the data directory).
///
/// quinn's defaults are random per process. After a restart (a crash, a deploy) the new
/// process then drops clients' packets as carrying invalid connection IDs, or answers
/// with resets whose tokens clients do not recognise, and every client keeps sending into
/// a dead connection until its heartbeat misses pile up (measured: ~55 s). With both keys
/// persisted, the first packet a client sends to the restarted server is answered with a
/// valid stateless reset and the client reconnects at once. The nodes of a cluster share
/// the secret, so any node answers a dead node's clients that way; their connection IDs
/// carry the node number ([`crate::cluster::cid`]).
fn endpoint_config(config: &Config) -> anyhow::Result<quinn::EndpointConfig> {
    let secret = match &config.quic_reset_key {
        Some(k) => k.clone(),
        None => reset_secret(&config.data)?,
    };
    let derive = |label: &[u8]| {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
        ring::hmac::sign(&key, label)
    };
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derive(b"stateless reset").as_ref());
    let cid_key = u64::from_le_bytes(
        derive(b"connection id").as_ref()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    let mut endpoint = quinn::EndpointConfig::new(Arc::new(reset));
    match &config.cluster {
        Some(c) => {
            let node = c.node_number;
            endpoint
                .cid_generator(move || Box::new(crate::cluster::cid::NodeCidGenerator::new(node)));
        }
        None => {
            endpoint.cid_generator(move || {
                Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            });
        }
    }
    Ok(endpoint)
}

fn reset_secret(data: &Path) -> anyhow::Result<Vec<u8>> {
    let path = data.join("quic-reset.key");
    let bytes = match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => b,
        Ok(_) => anyhow::bail!("{} must hold 32 bytes", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data)?;
            let mut b = vec![0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
            write_private(&path, &b)?;
            tracing::info!(path = %path.display(), "generated QUIC stateless-reset key");
            b
        }
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    Ok(bytes)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

/// A running server.
pub struct ServerHandle {
    /// Bound QUIC address.
    pub quic_addr: SocketAddr,
    /// Bound TLS-over-TCP address, if the fallback listener is on.
    pub tcp_addr: Option<SocketAddr>,
    /// Bound WebSocket-over-TLS address, if that listener is on.
    pub ws_addr: Option<SocketAddr>,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// The certificate clients should trust (dev mode: the generated one).
    pub cert_path: PathBuf,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// Shared state (registry, store, config).
    pub shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Opens the store, binds both listeners and starts serving.
pub async fn start(config: Config) -> anyhow::Result<ServerHandle> {
    let store = open_store(&config).await?;
    start_with_store(config, store).await
}

/// Opens the store the configuration names: PostgreSQL, or SQLite in the data directory.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.store {
        Some(pg) => Arc::new(
            PgStore::open(pg)
                .await
                .context("open the PostgreSQL store")?,
        ),
        None => Arc::new(
            SqliteStore::open_with(&config.data, config.durability, config.create_store)
                .with_context(|| format!("open store in {}", config.data.display()))?,
        ),
    })
}

/// [`start`] over a store already open (tests wrap one to hold a call at a chosen point).
pub async fn start_with_store(
    config: Config,
    store: Arc<dyn Store>,
) -> anyhow::Result<ServerHandle> {
    let metrics = metrics_handle();
    register_metrics();
    let tls = tls_material(&config)?;
    let verifier = Arc::new(HmacVerifier::new(
        config.token_secret.clone(),
        config.banned_users.clone(),
    ));
    let (socket, udp_buffer) =
        tern_protocol::io::udp_socket(config.quic, tern_protocol::io::UDP_BUFFER_BYTES)
            .with_context(|| format!("bind QUIC on {}", config.quic))?;
    if udp_buffer < tern_protocol::io::UDP_BUFFER_BYTES {
        tracing::warn!(
            granted = udp_buffer,
            wanted = tern_protocol::io::UDP_BUFFER_BYTES,
            "UDP receive buffer capped by the kernel (raise net.core.rmem_max); login bursts may drop packets"
        );
    }
    let endpoint = quinn::Endpoint::new(
        endpoint_config(&config)?,
        Some(quic_config(&config, &tls)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .with_context(|| format!("start QUIC on {}", config.quic))?;
    let quic_addr = endpoint.local_addr()?;
    let tcp = match config.tcp {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind TCP on {addr}"))?,
        ),
        None => None,
    };
    let tcp_addr = tcp.as_ref().map(|l| l.local_addr()).transpose()?;
    let tls_acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&tls)?));
    let ws = match config.ws {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind WebSocket on {addr}"))?,
        ),
        None => None,
    };
    let ws_addr = ws.as_ref().map(|l| l.local_addr()).transpose()?;
    // WebSocket clients (browsers) speak HTTP/1.1 inside TLS.
    let mut ws_tls = tls_config(&tls)?;
    ws_tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let ws_acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ws_tls));
    let http = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("bind HTTP on {}", config.http))?;
    let http_addr = http.local_addr()?;
    let (cluster, inbound) = match &config.cluster {
        Some(c) => {
            let (cluster, inbound) = crate::cluster::Cluster::connect(c.clone())
                .await
                .context("join the cluster")?;
            tracing::info!(node = %c.node, number = c.node_number, nats = %c.nats_url, "cluster node");
            (Some(cluster), Some(inbound))
        }
        None => (None, None),
    };
    let shared = Arc::new(Shared::new(config, store, verifier, cluster));
    let (stop, stop_rx) = watch::channel(false);
    let webhooks = tokio::spawn(shared.webhooks.clone().run(stop_rx.clone()));
    let routing = inbound.map(|inbound| {
        tokio::spawn(crate::routing::run(
            shared.clone(),
            inbound,
            stop_rx.clone(),
        ))
    });

    let accept = {
        let (endpoint, shared, mut stop_rx) = (endpoint.clone(), shared.clone(), stop_rx.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    incoming = endpoint.accept() => match incoming {
                        Some(incoming) => match shared.unauthenticated.clone().try_acquire_owned() {
                            // Held until the connection logs in or gives up.
                            Ok(permit) => { tokio::spawn(handle_incoming(shared.clone(), incoming, permit)); }
                            Err(_) => {
                                // Refused before the handshake costs anything.
                                metrics::counter!("tern_connections_refused_total", "reason" => "unauthenticated").increment(1);
                                incoming.refuse();
                            }
                        },
                        None => break,
                    },
                    _ = stop_rx.changed() => break,
                }
            }
        })
    };
    let mut tasks = vec![accept];
    use tern_protocol::link::Transport;
    for (listener, transport, acceptor) in [
        (tcp, Transport::Tcp, tls_acceptor),
        (ws, Transport::WebSocket, ws_acceptor),
    ] {
        if let Some(listener) = listener {
            tasks.push(tokio::spawn(crate::session::accept_streams(
                shared.clone(),
                listener,
                transport,
                acceptor,
                stop_rx.clone(),
            )));
        }
    }
    let http_task = {
        let router = crate::http::router(shared.clone(), metrics);
        tokio::spawn(crate::http_serve::serve(http, router, stop_rx.clone()))
    };
    tracing::info!(%quic_addr, ?tcp_addr, ?ws_addr, %http_addr, "tern-server started");
    tasks.push(http_task);
    tasks.push(webhooks);
    tasks.extend(routing);
    Ok(ServerHandle {
        quic_addr,
        tcp_addr,
        ws_addr,
        http_addr,
        cert_der: tls.certs[0].clone(),
        cert_path: tls.cert_path,
        shared,
        endpoint,
        stop,
        tasks,
    })
}

impl ServerHandle {
    /// Graceful shutdown; returns when the store is flushed and the endpoint closed.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.shared.shutting_down.store(true, Ordering::Relaxed);
        let _ = self.stop.send(true);
        let kicked = self.shared.registry.command_all(SessionCmd::Kick {
            reason: pb::KickReason::ServerShutdown,
            text: "server going away".into(),
        });
        tracing::info!(sessions = kicked, "asked sessions to leave");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !self.shared.registry.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.shared.store.flush().await {
            tracing::error!(error = %e, "store flush at shutdown failed");
        }
        if let Some(cluster) = &self.shared.cluster {
            cluster.close().await;
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(pb::ErrorCode::ShuttingDown as u32),
            b"server shutdown",
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        for mut t in self.tasks {
            // A webhook POST under way may take its full request timeout: wait a
            // little, then stop it (its job stays in the durable outbox).
            if tokio::time::timeout(Duration::from_secs(2), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
        tracing::info!("shutdown complete");
    }
}
