//! The server under test, and the QUIC baseline it is compared with, as separate
//! processes.
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
pub(crate) struct ServerProc {
    child: Child,
    /// QUIC address.
    pub addr: SocketAddr,
    /// HTTP API address.
    pub http: SocketAddr,
    /// TLS-over-TCP address (dev servers print it).
    pub tcp: Option<SocketAddr>,
    /// WebSocket address (dev servers print it).
    pub ws: Option<SocketAddr>,
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
    pub(crate) fn start(extra: &[&str]) -> anyhow::Result<ServerProc> {
        Self::start_bin(None, extra)
    }

    /// Like [`start`](Self::start), with another `tern-server` binary (a baseline build).
    pub(crate) fn start_bin(bin: Option<&Path>, extra: &[&str]) -> anyhow::Result<ServerProc> {
        let dir = tempfile::Builder::new().prefix("tern-bench-").tempdir()?;
        let mut p = Self::start_in_bin(bin, dir.path(), extra)?;
        p._dir = Some(dir);
        Ok(p)
    }

    /// Like [`start`](Self::start) with a given data directory (kept afterwards).
    pub(crate) fn start_in(data: &Path, extra: &[&str]) -> anyhow::Result<ServerProc> {
        Self::start_in_bin(None, data, extra)
    }

    fn start_in_bin(bin: Option<&Path>, data: &Path, extra: &[&str]) -> anyhow::Result<ServerProc> {
        let bin = match bin {
            Some(b) => b.to_path_buf(),
            None => server_bin()?,
        };
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
        let (mut tcp, mut ws) = (None, None);
        for line in lines.by_ref() {
            let line = line?;
            if let Some(a) = line.strip_prefix("quic listening on ") {
                addr = Some(a.parse()?);
            } else if let Some(a) = line.strip_prefix("tcp listening on ") {
                tcp = Some(a.parse()?);
            } else if let Some(a) = line.strip_prefix("ws listening on ") {
                ws = Some(a.parse()?);
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
            tcp,
            ws,
            cert,
            cert_path,
            _dir: None,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the server process, in bytes.
    pub(crate) fn rss(&self) -> anyhow::Result<u64> {
        rss_of(self.child.id())
    }

    /// The PEM of the dev certificate (for `tern-client`'s `ca_pem`).
    pub(crate) fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(&self.cert_path).unwrap_or_default()
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time (user + system) of process `pid` so far, seconds (`/proc/<pid>/stat`,
/// in clock ticks of 1/100 s as on Linux).
pub(crate) fn cpu_secs_of(pid: u32) -> anyhow::Result<f64> {
    cpu_secs_in(&format!("/proc/{pid}/stat"))
}

/// The name `tern-server` gives its SQLite writer thread, as `/proc` shows it (a
/// thread's `comm` keeps 15 bytes of the name `tern-store-writer`).
pub(crate) const WRITER_THREAD: &str = "tern-store-writ";

/// The SQLite store's WAL checkpointer thread (`tern-store-checkpoint`), which copies
/// what the writer committed into the database file: counted with the writer, as the
/// copy was the writer's own work before it had a thread.
pub(crate) const CHECKPOINT_THREAD: &str = "tern-store-chec";

/// CPU time (user + system) of the threads of process `pid` whose name is `comm`,
/// seconds. A thread that has exited is not counted, so this is for long-lived threads
/// (the store writer lives as long as the server); 0 when there is none.
pub(crate) fn thread_cpu_secs(pid: u32, comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == comm))
        .filter_map(|t| cpu_secs_in(&t.path().join("stat").to_string_lossy()).ok())
        .sum()
}

/// User + system CPU seconds from a `/proc` `stat` file (a process's or a thread's).
fn cpu_secs_in(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("no utime")?.parse::<u64>()?
        + fields.get(12).context("no stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// CPU time of every process named `name` (e.g. all of PostgreSQL's), seconds.
pub(crate) fn cpu_secs_named(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .filter_map(|pid| cpu_secs_of(pid).ok())
        .sum()
}

/// Resident set size of process `pid`, in bytes.
fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kb * 1024)
}

/// The baseline: `tern-bench echo-server`, a bare quinn endpoint (same socket buffers
/// and stream limits as `tern-server`) that returns every datagram and does nothing
/// else. Its throughput is the QUIC ceiling, its memory per idle connection the QUIC
/// floor.
pub(crate) struct EchoProc {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its self-signed certificate.
    pub cert: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

impl EchoProc {
    /// Starts the echo server; `durable` stores each datagram before echoing it
    /// ([`crate::echo`]), in a database in its temporary directory.
    pub(crate) fn start(durable: bool) -> anyhow::Result<EchoProc> {
        let dir = tempfile::Builder::new().prefix("tern-echo-").tempdir()?;
        let cert_path = dir.path().join("cert.der");
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("echo-server").arg("--cert-out").arg(&cert_path);
        if durable {
            cmd.arg("--durable").arg(dir.path().join("echo.db"));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        for line in lines.by_ref() {
            if let Some(a) = line?.strip_prefix("echo listening on ") {
                addr = Some(a.parse()?);
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        let cert = CertificateDer::from(std::fs::read(&cert_path)?);
        Ok(EchoProc {
            child,
            addr: addr.context("echo server exited before listening")?,
            cert,
            _dir: dir,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size, bytes.
    pub(crate) fn rss(&self) -> anyhow::Result<u64> {
        rss_of(self.child.id())
    }
}

impl Drop for EchoProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A named thread's CPU is found by its name, and it is part of the process's.
    #[test]
    fn a_named_threads_cpu_is_counted_apart_from_the_process() {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let burner = std::thread::Builder::new()
            .name("bench-cpu-probe".into())
            .spawn(move || {
                let mut x = 0u64;
                while stop_rx.try_recv().is_err() {
                    x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                }
                x
            })
            .expect("spawn");
        let pid = std::process::id();
        let started = std::time::Instant::now();
        // /proc counts in ticks of 10 ms: burn until a few have gone to the thread.
        while thread_cpu_secs(pid, "bench-cpu-probe") < 0.05 {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "the probe thread's CPU never showed"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let thread = thread_cpu_secs(pid, "bench-cpu-probe");
        let process = cpu_secs_of(pid).expect("own stat");
        stop_tx.send(()).expect("stop");
        burner.join().expect("join");
        assert!(thread <= process + 0.01, "{thread} > {process}");
        assert_eq!(thread_cpu_secs(pid, "no-such-thread"), 0.0);
        assert_eq!(WRITER_THREAD.len(), 15, "a thread's comm keeps 15 bytes");
        assert_eq!(
            CHECKPOINT_THREAD.len(),
            15,
            "a thread's comm keeps 15 bytes"
        );
    }
}
