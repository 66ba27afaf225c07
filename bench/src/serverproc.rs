//! The server under test, as a separate process.
//!
//! Benchmarks run `tern-server` as its own process, as operators do: its memory can be
//! read from `/proc` without the load generator's, and a CPU-bound load generator does
//! not share a tokio runtime with it. The binary is found next to `tern-bench` (both are
//! built by the same `cargo build`), or at `$TERN_SERVER_BIN`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use rustls::pki_types::CertificateDer;

/// A running `tern-server --dev`.
pub struct ServerProc {
    child: Child,
    /// QUIC address.
    pub addr: SocketAddr,
    /// HTTP API address.
    pub http: SocketAddr,
    /// The dev certificate (DER) and its PEM file.
    pub cert: CertificateDer<'static>,
    /// PEM path of the dev certificate.
    pub cert_path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn server_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TERN_SERVER_BIN") {
        return Ok(p.into());
    }
    let me = std::env::current_exe()?;
    let bin = me.with_file_name(format!("tern-server{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p tern-server` or set TERN_SERVER_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

impl ServerProc {
    /// Starts a dev server on loopback with a fresh data directory, no rate limits to
    /// speak of, and `extra` flags.
    pub fn start(extra: &[&str]) -> anyhow::Result<ServerProc> {
        let dir = tempfile::Builder::new().prefix("tern-bench-").tempdir()?;
        let mut p = Self::start_in(dir.path(), extra)?;
        p._dir = Some(dir);
        Ok(p)
    }

    /// Like [`start`](Self::start) with a given data directory (kept afterwards).
    pub fn start_in(data: &Path, extra: &[&str]) -> anyhow::Result<ServerProc> {
        let bin = server_bin()?;
        let mut child = Command::new(&bin)
            .args(["--dev", "--quic", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--rate-per-sec", "1000000", "--rate-burst", "1000000"])
            .args(["--max-concurrent-logins", "4096"])
            .args(extra)
            .arg("--data")
            .arg(data)
            .env(
                "RUST_LOG",
                std::env::var("TERN_BENCH_SERVER_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut http, mut cert_path) = (None, None, None);
        for line in lines.by_ref() {
            let line = line?;
            if let Some(a) = line.strip_prefix("quic listening on ") {
                addr = Some(a.parse()?);
            } else if let Some(a) = line.strip_prefix("http listening on ") {
                http = Some(a.parse()?);
            } else if let Some(p) = line.strip_prefix("dev certificate: ") {
                cert_path = Some(PathBuf::from(p));
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        let cert_path = cert_path.context("server exited before printing its certificate")?;
        let pem = std::fs::read(&cert_path)?;
        let cert = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .context("no certificate in PEM")??;
        Ok(ServerProc {
            child,
            addr: addr.context("no quic address printed")?,
            http: http.context("no http address printed")?,
            cert,
            cert_path,
            _dir: None,
        })
    }

    /// Resident set size of the server process, in bytes.
    pub fn rss(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?
            .parse()?;
        Ok(kb * 1024)
    }

    /// The PEM of the dev certificate (for `tern-client`'s `ca_pem`).
    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert_path).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
