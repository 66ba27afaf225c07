//! A cluster for tests: a `nats-server` child process, one scratch PostgreSQL database
//! and several `tern-server` nodes (child processes of the binary, so a test can
//! `kill -9` one), all on loopback.
//!
//! The nodes share one data directory: it holds only the dev certificate (so a client
//! trusts every node with one PEM) and the QUIC reset key (so any node resets a dead
//! node's connections); everything else is in the shared database.
//!
//! Needs `nats-server` on the PATH (Debian's `nats-server`) and `TERN_TEST_PG`.
//! Without them [`Cluster::start`] returns `None` and the test is skipped with a line on
//! stderr, unless `TERN_REQUIRE_NATS` / `TERN_REQUIRE_PG` is set (CI), which makes a
//! missing one a failure.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{Proc, on_postgres, spawn_server_env};

/// A `nats-server` on a loopback port.
pub struct Nats {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `nats-server` can be run here (see the module doc for CI).
pub fn nats_available() -> bool {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("TERN_REQUIRE_NATS").is_err(),
            "TERN_REQUIRE_NATS is set but nats-server is not on the PATH"
        );
        eprintln!("nats-server not found: cluster test skipped (apt-get install nats-server)");
    }
    found
}

impl Nats {
    /// Starts one on a free port and waits until it accepts connections.
    pub fn start() -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < end, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL the nodes use.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it (its subscriptions and queued messages are gone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nodes, NATS and the store of a test cluster.
pub struct Cluster {
    /// The NATS server.
    pub nats: Nats,
    /// The nodes; `None` where one was killed or stopped.
    pub nodes: Vec<Option<Proc>>,
    /// The nodes' QUIC addresses (kept after a node is gone, for restarts).
    pub addrs: Vec<SocketAddr>,
    /// The shared data directory.
    pub data: PathBuf,
    store: String,
    bin: String,
    extra: Vec<String>,
    /// Environment of the nodes started from now on.
    pub env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts NATS and `n` nodes of the server binary `bin` (a test passes
    /// `env!("CARGO_BIN_EXE_tern-server")`) with data under `dir`, each with `extra`
    /// flags. `None` (test skipped) without nats-server or PostgreSQL, or when the
    /// tests run a second time on PostgreSQL (`TERN_TEST_STORE=postgres`: this test
    /// already ran on it).
    pub async fn start(bin: &str, dir: &Path, n: usize, extra: &[&str]) -> Option<Cluster> {
        Cluster::start_env(bin, dir, n, extra, &[]).await
    }

    /// Like [`Cluster::start`], with `env` set for every node.
    pub async fn start_env(
        bin: &str,
        dir: &Path,
        n: usize,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Option<Cluster> {
        if on_postgres() {
            eprintln!("cluster test: already run on PostgreSQL in the first pass");
            return None;
        }
        if !nats_available() {
            return None;
        }
        let base = tern_server::store::postgres::testing::base_url()?;
        let store = tern_server::store::postgres::testing::scratch_database(&base)
            .await
            .expect("scratch database");
        let nats = Nats::start();
        let mut c = Cluster {
            nats,
            nodes: vec![],
            addrs: vec![],
            data: dir.join("cluster"),
            store,
            bin: bin.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for i in 0..n {
            // One after the other: the first generates the shared dev certificate.
            let node = c.spawn(i, "127.0.0.1:0");
            c.addrs.push(node.addr);
            c.nodes.push(Some(node));
        }
        Some(c)
    }

    fn spawn(&self, i: usize, quic: &str) -> Proc {
        let node = format!("node{i}");
        let number = i.to_string();
        let nats = self.nats.url();
        let mut args: Vec<&str> = vec![
            "--store",
            &self.store,
            "--nats",
            &nats,
            "--node",
            &node,
            "--node-number",
            &number,
            "--tcp",
            "off",
            "--ws",
            "off",
        ];
        args.extend(self.extra.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let level = std::env::var("TERN_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into());
        spawn_server_env(
            &self.bin,
            &self.data,
            quic,
            &args,
            &env,
            &level,
            Stdio::inherit(),
        )
    }

    /// Node `i`.
    pub fn node(&self, i: usize) -> &Proc {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Every node's address, comma-separated (a client's `server` setting).
    pub fn servers(&self) -> String {
        self.addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The dev certificate every node uses, PEM.
    pub fn cert_pem(&self) -> Vec<u8> {
        std::fs::read(self.data.join("dev-cert.pem")).expect("dev certificate")
    }

    /// `kill -9` of node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGTERM to node `i` and wait for it to exit (a graceful stop).
    pub fn stop(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].take() {
            let _ = Command::new("kill")
                .args(["-TERM", &p.child.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(15);
            while p.child.try_wait().ok().flatten().is_none() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts node `i` again on its old address.
    pub fn restart(&mut self, i: usize) {
        let node = self.spawn(i, &self.addrs[i].to_string());
        self.nodes[i] = Some(node);
    }
}
