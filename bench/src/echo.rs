//! The baselines Tern's relay is measured against: a QUIC endpoint that echoes each
//! datagram (what the network stack alone can do), and a *durable* echo that first
//! stores each datagram the way Tern's SQLite writer stores a message.
//!
//! The durable echo is the honest ceiling for a server that acknowledges only what it
//! has on disk: the same quinn connections, and one writer thread that owns the
//! database (WAL, `synchronous=FULL`), takes every datagram waiting by the server
//! writer's own rule (`tern_server::store::sqlite::next_batch`), inserts one row
//! per datagram in one transaction, commits, and only then echoes them. What Tern does
//! beyond that (timelines, receipts, cursors, fan-out, sessions) is the gap between the
//! two numbers.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use quinn::crypto::rustls::QuicServerConfig;
use tokio::sync::mpsc;

/// The `echo-server` subcommand: serves until killed. With `durable`, each datagram is
/// committed to that SQLite file before it is echoed.
pub(crate) async fn serve(cert_out: &Path, durable: Option<&Path>) -> anyhow::Result<()> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    std::fs::write(cert_out, ck.cert.der())?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)?;
    crypto.alpn_protocols = vec![tern_protocol::ALPN.to_vec()];
    let mut config =
        quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(crypto)?));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(2u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.max_idle_timeout(Some(quinn::IdleTimeout::try_from(
        std::time::Duration::from_secs(600),
    )?));
    config.transport_config(Arc::new(transport));
    let (socket, _) =
        tern_protocol::io::udp_socket("127.0.0.1:0".parse()?, tern_protocol::io::UDP_BUFFER_BYTES)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let writer = match durable {
        Some(path) => Some(start_writer(path)?),
        None => None,
    };
    println!("echo listening on {}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        let writer = writer.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok(d) = conn.read_datagram().await {
                match &writer {
                    Some(w) => {
                        if w.send((conn.clone(), d)).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        let _ = conn.send_datagram(d);
                    }
                }
            }
        });
    }
    Ok(())
}

/// A datagram waiting to be stored, and where to echo it once it is.
type Job = (quinn::Connection, Bytes);

/// Opens the database as Tern's store opens its own (WAL, `synchronous=FULL`, the
/// same page cache) and starts the writer thread.
fn start_writer(path: &Path) -> anyhow::Result<mpsc::Sender<Job>> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS echoes (id INTEGER PRIMARY KEY, body BLOB NOT NULL, ts INTEGER NOT NULL)",
    )?;
    // The server's store queue is bounded the same way: a full queue is back-pressure.
    let (tx, rx) = mpsc::channel(4096);
    std::thread::Builder::new()
        .name("echo-writer".into())
        .spawn(move || {
            if let Err(e) = writer_loop(conn, rx) {
                eprintln!("echo writer stopped: {e}");
            }
        })?;
    Ok(tx)
}

/// Takes every job waiting (up to the server's batch limit), stores one row per
/// datagram in one transaction, commits, then echoes.
fn writer_loop(
    mut conn: rusqlite::Connection,
    mut rx: mpsc::Receiver<Job>,
) -> rusqlite::Result<()> {
    while let Some(batch) = tern_server::store::sqlite::next_batch(&mut rx) {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached("INSERT INTO echoes (body, ts) VALUES (?1, ?2)")?;
            for (_, d) in &batch {
                insert.execute(rusqlite::params![&d[..], tern_protocol::unix_ms() as i64])?;
            }
        }
        tx.commit()?;
        for (conn, d) in batch {
            let _ = conn.send_datagram(d);
        }
    }
    Ok(())
}
