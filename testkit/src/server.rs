//! Servers for tests: in process on ephemeral loopback ports ([`TestServer`],
//! [`server_with`]), or the `tern-server` binary as a child process that a test can
//! kill ([`spawn_server`]).
//!
//! With `TERN_TEST_STORE=postgres` (and `TERN_TEST_PG`, see
//! `tern_server::store::postgres::testing`) every server here runs on its own scratch
//! PostgreSQL database instead of SQLite: the same tests, the other backend. A server
//! restarted on the same data directory finds the same database again.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use rustls::pki_types::CertificateDer;
use tern_protocol::pb;
use tern_server::config::{Config, DEV_API_KEY};
use tern_server::server::{ServerHandle, start};

use crate::raw::TestClient;

/// Whether the servers of this test run use the PostgreSQL store.
pub fn on_postgres() -> bool {
    std::env::var("TERN_TEST_STORE").is_ok_and(|s| s == "postgres")
}

/// `true` (and a line on stderr) when a test of the SQLite file itself runs on
/// PostgreSQL: such a test returns early, `why` says what ties it to SQLite.
pub fn sqlite_only(why: &str) -> bool {
    if on_postgres() {
        eprintln!("skipped on PostgreSQL: {why}");
    }
    on_postgres()
}

/// The PostgreSQL URL of the server whose data directory is `data` when tests run on
/// PostgreSQL ([`on_postgres`]): a scratch database made on first use and remembered
/// in the directory, so a restarted server finds its data again.
pub fn test_store(data: &Path) -> Option<String> {
    if !on_postgres() {
        return None;
    }
    let file = data.join("test-store-url");
    if let Ok(url) = std::fs::read_to_string(&file) {
        return Some(url);
    }
    let base = tern_server::store::postgres::testing::base_url()
        .expect("TERN_TEST_STORE=postgres needs TERN_TEST_PG");
    // Its own thread and runtime: callers may be inside a runtime already.
    let url = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(tern_server::store::postgres::testing::scratch_database(
                &base,
            ))
            .expect("create a scratch PostgreSQL database")
    })
    .join()
    .unwrap();
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(&file, &url).unwrap();
    Some(url)
}

/// `config` on the test store of its data directory (see [`test_store`]).
fn use_test_store(config: &mut Config) {
    if let Some(url) = test_store(&config.data) {
        config.store = Some(tern_server::store::postgres::PgSettings::new(url));
    }
}

/// The dev-mode loopback configuration for data in `dir`, on the test store
/// ([`test_store`]) when tests run on PostgreSQL.
pub fn dev_config(dir: &Path) -> Config {
    let mut config = Config::dev_loopback(dir);
    use_test_store(&mut config);
    config
}

/// An in-process dev server with its own data directory.
pub struct TestServer {
    /// The running server.
    pub handle: ServerHandle,
    /// Its data directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl TestServer {
    /// Starts a dev server on loopback with `tweak` applied to its configuration.
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut config = dev_config(dir.path());
        tweak(&mut config);
        let handle = start(config).await.expect("server starts");
        TestServer { handle, dir }
    }

    /// The QUIC address.
    pub fn addr(&self) -> SocketAddr {
        self.handle.quic_addr
    }

    /// The TLS-over-TCP address (dev servers listen there too).
    pub fn tcp_addr(&self) -> SocketAddr {
        self.handle.tcp_addr.expect("dev servers listen on TCP")
    }

    /// The WebSocket-over-TLS address (dev servers listen there too).
    pub fn ws_addr(&self) -> SocketAddr {
        self.handle
            .ws_addr
            .expect("dev servers listen for WebSocket")
    }

    /// The certificate to trust.
    pub fn cert(&self) -> CertificateDer<'static> {
        self.handle.cert_der.clone()
    }

    /// The URL of an HTTP API path.
    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.handle.http_addr, path)
    }

    /// A raw client logged in as `user` on `device` (asserts the login succeeded).
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

/// A dev server in `dir` whose rate limits do not get in a test's way.
pub async fn server(dir: &Path) -> ServerHandle {
    server_with(dir, |_| {}).await
}

/// A dev server with test-friendly rate limits and `tune` applied to its config.
pub async fn server_with(dir: &Path, tune: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut config = dev_config(dir);
    config.rate_per_sec = 100_000;
    config.rate_burst = 100_000;
    tune(&mut config);
    start(config).await.unwrap()
}

/// The server's `/metrics` page (Prometheus text).
pub async fn metrics(server: &ServerHandle) -> String {
    metrics_at(server.http_addr).await
}

/// The `/metrics` page of the HTTP API at `http`.
pub async fn metrics_at(http: SocketAddr) -> String {
    api()
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text")
}

/// An HTTP client for the API.
pub fn api() -> reqwest::Client {
    // reqwest's rustls needs a process-wide crypto provider (ring, as everywhere here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The dev API key as an `Authorization` value.
pub fn bearer() -> String {
    format!("Bearer {DEV_API_KEY}")
}

/// A `tern-server --dev` child process (for tests that kill it).
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Its TLS-over-TCP address.
    pub tcp: Option<SocketAddr>,
    /// Its HTTP API address.
    pub http: Option<SocketAddr>,
    /// Its dev certificate.
    pub cert: CertificateDer<'static>,
    /// The same, PEM.
    pub cert_pem: Vec<u8>,
}

/// Starts the server binary `bin` (a test passes `env!("CARGO_BIN_EXE_tern-server")`)
/// on `quic` with data in `data`; returns once it listens.
pub fn spawn_server(bin: &str, data: &Path, quic: &str) -> Proc {
    spawn_server_with(bin, data, quic, &[])
}

/// Like [`spawn_server`], with `extra` flags after the usual ones.
pub fn spawn_server_with(bin: &str, data: &Path, quic: &str, extra: &[&str]) -> Proc {
    let level = std::env::var("TERN_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into());
    spawn_server_logging(bin, data, quic, extra, &level, Stdio::inherit())
}

/// Like [`spawn_server_with`], with the server's log (stderr) at `level` going to `log`.
pub fn spawn_server_logging(
    bin: &str,
    data: &Path,
    quic: &str,
    extra: &[&str],
    level: &str,
    log: impl Into<Stdio>,
) -> Proc {
    spawn_server_env(bin, data, quic, extra, &[], level, log)
}

/// Like [`spawn_server_logging`], with `env` set for the process.
pub fn spawn_server_env(
    bin: &str,
    data: &Path,
    quic: &str,
    extra: &[&str],
    env: &[(&str, &str)],
    level: &str,
    log: impl Into<Stdio>,
) -> Proc {
    let store: Vec<String> = test_store(data)
        .map(|url| vec!["--store".into(), url])
        .unwrap_or_default();
    let mut child = Command::new(bin)
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
        .args(&store)
        .args(extra)
        .envs(env.iter().copied())
        .env("RUST_LOG", level)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn tern-server");
    let stdout = child.stdout.take().unwrap();
    let mut addr = None;
    let mut tcp = None;
    let mut http = None;
    let mut cert_path = None;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("quic listening on ") {
            addr = Some(a.parse().unwrap());
        }
        if let Some(a) = line.strip_prefix("tcp listening on ") {
            tcp = Some(a.parse().unwrap());
        }
        if let Some(a) = line.strip_prefix("http listening on ") {
            http = Some(a.parse().unwrap());
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
        tcp,
        http,
        cert,
        cert_pem: pem,
    }
}

impl Drop for Proc {
    /// A test that fails (or forgets) does not leave a server running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// The server's `/metrics` page (Prometheus text).
    pub async fn metrics(&self) -> String {
        metrics_at(self.http.expect("server printed its HTTP address")).await
    }

    /// The process's resident memory, in KiB (Linux `/proc`).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("server process status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line")
    }
}
