//! One node against a cluster of three, on one machine and one PostgreSQL server: what
//! the cluster path costs per message (not how it scales: the nodes share two cores).
//!
//! Both setups run the relay ring of `tern-bench throughput` (client i sends to client
//! i + 1). On one node every message stays in the node; in the cluster client i logs in
//! to node i mod 3, so **every** message crosses nodes: stored by the sender's node,
//! published to the recipient's subject on NATS, pushed by the recipient's node. Per
//! setup: closed-loop capacity with the CPU per message of the nodes, of NATS and of
//! PostgreSQL; latency at 50 % of capacity and at a light fixed load (the extra latency
//! of a cross-node push); NATS messages and bytes per delivered message, from the NATS
//! server's own counters (`/varz`). Then large groups (read diffusion) of 1,000 and
//! 10,000 members, some online on each node: NATS traffic per group message.
//!
//! Writes `--out` (markdown) and prints JSON.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tern_protocol::pb;

use crate::raw;
use crate::serverproc::ServerProc;
use crate::suite::Meta;
use crate::throughput::{self, LoadPoint, Ring};
use crate::ui;

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// A PostgreSQL server and a role that may create databases.
    #[arg(long, env = "TERN_TEST_PG")]
    pub postgres: String,
    /// Connected clients in the relay phases.
    #[arg(long, default_value_t = 300)]
    pub clients: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 8)]
    pub secs: u64,
    /// Nodes in the cluster setup.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// The light fixed load (msg/s) at which the cross-node push's extra latency is
    /// read.
    #[arg(long, default_value_t = 200.0)]
    pub light: f64,
    /// Large-group sizes for the NATS traffic per group message (a normal group of the
    /// smallest size is measured too).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pub group_sizes: Vec<usize>,
    /// Tiny sizes: proves the program runs, measures nothing.
    #[arg(long)]
    pub quick: bool,
    /// Markdown report to write.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One setup's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// `1 node` or `3 nodes`.
    pub name: String,
    /// Deliveries per second, closed loop.
    pub capacity_per_sec: f64,
    /// CPU of the tern-server processes per delivered message, µs.
    pub nodes_us_per_msg: f64,
    /// CPU of nats-server per delivered message, µs.
    pub nats_us_per_msg: f64,
    /// CPU of PostgreSQL per delivered message, µs.
    pub postgres_us_per_msg: f64,
    /// NATS messages in (published) per delivered message.
    pub nats_msgs_in_per_msg: f64,
    /// NATS payload bytes in (published) per delivered message.
    pub nats_bytes_in_per_msg: f64,
    /// NATS payload bytes out (delivered to nodes) per delivered message.
    pub nats_bytes_out_per_msg: f64,
    /// Latency at 50 % of capacity.
    pub half_load: LoadPoint,
    /// Latency at the light fixed load.
    pub light_load: LoadPoint,
}

/// NATS traffic of one group message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GroupRow {
    /// Members.
    pub members: usize,
    /// A large group (read diffusion: one log entry, one publish on the group's
    /// subject), or a normal one (write diffusion: an entry per member, a publish on
    /// each member's subject).
    pub large: bool,
    /// Members online (spread over the nodes).
    pub online: usize,
    /// Group messages sent.
    pub messages: usize,
    /// NATS messages published per group message.
    pub msgs_in: f64,
    /// NATS messages delivered to nodes per group message.
    pub msgs_out: f64,
    /// Payload bytes published per group message.
    pub bytes_in: f64,
    /// Payload bytes delivered to nodes per group message.
    pub bytes_out: f64,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Provenance.
    pub meta: Meta,
    /// One node, then the cluster.
    pub setups: Vec<Setup>,
    /// Large groups in the cluster.
    pub groups: Vec<GroupRow>,
}

/// A nats-server with its monitoring port, for the run.
struct Nats {
    child: Child,
    port: u16,
    monitor: u16,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Nats {
    fn start() -> anyhow::Result<Nats> {
        let (port, monitor) = (free_port()?, free_port()?);
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn nats-server (apt-get install nats-server)")?;
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", monitor)).is_err() {
            anyhow::ensure!(Instant::now() < end, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Nats {
            child,
            port,
            monitor,
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (in_msgs, out_msgs, in_bytes, out_bytes) so far.
    async fn counters(&self) -> anyhow::Result<[f64; 4]> {
        let v: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{}/varz", self.monitor))
            .await?
            .json()
            .await?;
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Ok([f("in_msgs"), f("out_msgs"), f("in_bytes"), f("out_bytes")])
    }

    fn cpu_secs(&self) -> f64 {
        crate::serverproc::cpu_secs_of(self.child.id()).unwrap_or(0.0)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn delta(a: [f64; 4], b: [f64; 4]) -> [f64; 4] {
    [b[0] - a[0], b[1] - a[1], b[2] - a[2], b[3] - a[3]]
}

/// Starts `n` nodes (cluster mode when `nats` is given) on one store, sharing a data
/// directory (one dev certificate).
fn start_nodes(
    n: usize,
    store: &str,
    nats: Option<&Nats>,
    data: &std::path::Path,
    max_large: usize,
) -> anyhow::Result<Vec<ServerProc>> {
    let max_large = max_large.to_string();
    let mut nodes = vec![];
    for i in 0..n {
        let (name, number) = (format!("bench{i}"), i.to_string());
        let mut extra = vec![
            "--store",
            store,
            "--tcp",
            "off",
            "--ws",
            "off",
            "--max-large-group-members",
            &max_large,
        ];
        let url = nats.map(Nats::url);
        if let Some(url) = &url {
            extra.extend(["--nats", url, "--node", &name, "--node-number", &number]);
        }
        nodes.push(ServerProc::start_in(data, &extra)?);
    }
    Ok(nodes)
}

async fn setup(
    args: &Args,
    name: &str,
    n: usize,
    nats: Option<&Nats>,
    tp: &throughput::Args,
) -> anyhow::Result<Setup> {
    let store = tern_server::store::postgres::testing::scratch_database(&args.postgres)
        .await
        .context("create a PostgreSQL database")?;
    let data = tempfile::Builder::new()
        .prefix("tern-bench-cluster-")
        .tempdir()?;
    let nodes = start_nodes(n, &store, nats, data.path(), 100)?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|s| s.addr).collect();
    let ring = Ring::login(tp, &addrs, &nodes[0].cert).await?;
    let pids: Vec<u32> = nodes.iter().map(ServerProc::pid).collect();
    // Read at the start and the end of the measured window (with the nodes' CPU).
    let nats_readings = std::sync::Mutex::new(vec![]);
    let nodes_cpu = || {
        nats_readings
            .lock()
            .expect("lock")
            .push(nats.map_or(0.0, Nats::cpu_secs));
        crate::throughput::ServerCpu::of(&pids)
    };
    let m = ring.closed_loop(tp, name, &nodes_cpu).await;
    let nats_cpu = match nats_readings.lock().expect("lock").as_slice() {
        [a, b, ..] => b - a,
        _ => 0.0,
    };
    let half_load = ring.load(m.per_sec, 50, tp.secs, &pids).await;
    // NATS traffic per message over an open-loop phase at the light load: every
    // message sent in it is delivered within it (it ends with a drain), so its NATS
    // counters divide by its deliveries.
    let light_pct = ((args.light / m.per_sec.max(1.0)) * 100.0).clamp(1.0, 50.0) as u32;
    let c0 = match nats {
        Some(n) => n.counters().await?,
        None => [0.0; 4],
    };
    let light_load = ring.load(m.per_sec, light_pct, tp.secs, &pids).await;
    let d = match nats {
        Some(n) => delta(c0, n.counters().await?),
        None => [0.0; 4],
    };
    let per = |x: f64| x / light_load.received.max(1) as f64;
    ring.close();
    let d_secs = m.delivered.max(1) as f64;
    Ok(Setup {
        name: name.into(),
        capacity_per_sec: m.per_sec,
        nodes_us_per_msg: m.server_cpu * 1e6 / d_secs,
        nats_us_per_msg: nats_cpu * 1e6 / d_secs,
        postgres_us_per_msg: m.postgres_cpu * 1e6 / d_secs,
        nats_msgs_in_per_msg: per(d[0]),
        nats_bytes_in_per_msg: per(d[2]),
        nats_bytes_out_per_msg: per(d[3]),
        half_load,
        light_load,
    })
}

/// NATS traffic per group message in the cluster: a normal group of the smallest
/// size, then large groups.
async fn groups(args: &Args, nats: &Nats) -> anyhow::Result<Vec<GroupRow>> {
    let q = args.quick;
    let sizes = if q {
        vec![50]
    } else {
        args.group_sizes.clone()
    };
    let max = sizes.iter().copied().max().unwrap_or(2);
    let smallest = sizes.iter().copied().min().unwrap_or(2);
    let runs: Vec<(usize, bool)> = std::iter::once((smallest, false))
        .chain(sizes.iter().map(|&n| (n, true)))
        .collect();
    let store = tern_server::store::postgres::testing::scratch_database(&args.postgres).await?;
    let data = tempfile::Builder::new()
        .prefix("tern-bench-cluster-")
        .tempdir()?;
    let nodes = start_nodes(args.nodes, &store, Some(nats), data.path(), max)?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|s| s.addr).collect();
    let endpoints = raw::endpoints(&nodes[0].cert, 2)?;
    let http = reqwest::Client::new();
    let mut rows = vec![];
    for (run, &(size, large)) in runs.iter().enumerate() {
        let members: Vec<String> = (0..size).map(|i| format!("g{run}m{i}")).collect();
        // At most 2,000 members a request (the server's limit): create, then add.
        let mut chunks = members.chunks(tern_server::groups::MAX_MEMBERS_PER_REQUEST);
        let first = chunks.next().unwrap_or_default();
        let resp: serde_json::Value = http
            .post(format!("http://{}/v1/groups", nodes[0].http))
            .bearer_auth(tern_server::config::DEV_API_KEY)
            .json(&serde_json::json!({ "name": "bench", "members": first, "large": large }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let group = resp["group"].as_str().context("group id")?.to_owned();
        for more in chunks {
            http.post(format!(
                "http://{}/v1/groups/{group}/members",
                nodes[0].http
            ))
            .bearer_auth(tern_server::config::DEV_API_KEY)
            .json(&serde_json::json!({ "members": more }))
            .send()
            .await?
            .error_for_status()?;
        }
        // Ten members online on each node (their Logs request subscribes the node to
        // the group); the sender is one of them.
        let online = 10 * addrs.len();
        let bar = ui::bar(online as u64, "members logging in");
        let (clients, _) = raw::login_many_to(
            &endpoints,
            &addrs,
            |i| format!("g{run}m{i}"),
            0..online,
            64,
            std::sync::Arc::new(raw::Ignore),
            &bar,
        )
        .await?;
        bar.finish();
        for c in &clients {
            c.request_logs();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let messages = if q { 5 } else { 50 };
        let c0 = nats.counters().await?;
        for _ in 0..messages {
            clients[0].send_to(pb::ConversationKind::Group, &group, raw::timed_body());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let d = delta(c0, nats.counters().await?);
        for c in &clients {
            c.close();
        }
        let per = |x: f64| x / messages as f64;
        let row = GroupRow {
            members: size,
            large,
            online,
            messages,
            msgs_in: per(d[0]),
            msgs_out: per(d[1]),
            bytes_in: per(d[2]),
            bytes_out: per(d[3]),
        };
        ui::say(format!(
            "{} group of {size}: {:.1} NATS msgs in / {:.1} out, {:.0} B in / {:.0} B out per group message",
            if large { "large" } else { "normal" },
            row.msgs_in,
            row.msgs_out,
            row.bytes_in,
            row.bytes_out
        ));
        rows.push(row);
    }
    Ok(rows)
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let started = Instant::now();
    let q = args.quick;
    let tp = throughput::Args {
        clients: if q { 30 } else { args.clients },
        endpoints: 4,
        window: 2,
        secs: if q { 1 } else { args.secs },
        loads: vec![50],
        baseline: None,
    };
    let nats = Nats::start()?;
    let one = setup(args, "1 node", 1, None, &tp).await?;
    let many_name = format!("{} nodes", args.nodes);
    let many = setup(args, &many_name, args.nodes, Some(&nats), &tp).await?;
    for s in [&one, &many] {
        ui::say(format!(
            "{}: {:.0} msg/s, nodes {:.0} µs/msg, NATS {:.0} µs/msg, p99 at 50 % {:.1} ms, p50 light {:.2} ms, {:.0} NATS B/msg",
            s.name,
            s.capacity_per_sec,
            s.nodes_us_per_msg,
            s.nats_us_per_msg,
            s.half_load.latency.p99_ms,
            s.light_load.latency.p50_ms,
            s.nats_bytes_in_per_msg
        ));
    }
    let groups = groups(args, &nats).await?;
    let report = Report {
        meta: Meta::now(q, started),
        setups: vec![one, many],
        groups,
    };
    ui::write_report(args.out.as_deref(), &markdown(&report))?;
    Ok(report)
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("# Cluster: one node against three, on one machine\n\n");
    s.push_str("Generated by `tern-bench cluster`; the design is in docs/operations.md (\"Cluster\"), the analysis and the capacity model in [analysis.md](analysis.md#cluster).\n\n");
    s.push_str(&format!("{}\n", r.meta.lines()));
    s.push_str("Relay ring on the PostgreSQL store (client i sends to client i + 1). In the cluster client i is on node i mod N, so every message is stored by one node and pushed by another, through NATS. All processes share this machine's cores: the cluster's numbers show the cost of the cluster path, not its scaling. CPU per delivered message over the closed-loop window; NATS traffic per delivered message from its own counters (`/varz`) over the light-load phase (every message sent in it is delivered within it). A 1:1 message makes three publishes: the entry for the recipient's timeline, the copy for the sender's other devices, and the delivered receipt back to the sender; NATS forwards only those some other node subscribed to.\n\n");
    s.push_str("| setup | msg/s | nodes µs/msg | NATS µs/msg | PostgreSQL µs/msg | NATS msgs/msg | NATS B in/msg | NATS B out/msg | p50 / p99 ms at 50 % | p50 / p99 ms at light load |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for x in &r.setups {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:.1} / {:.1} | {:.2} / {:.2} ({:.0} msg/s) |\n",
            x.name,
            x.capacity_per_sec,
            x.nodes_us_per_msg,
            x.nats_us_per_msg,
            x.postgres_us_per_msg,
            x.nats_msgs_in_per_msg,
            x.nats_bytes_in_per_msg,
            x.nats_bytes_out_per_msg,
            x.half_load.latency.p50_ms,
            x.half_load.latency.p99_ms,
            x.light_load.latency.p50_ms,
            x.light_load.latency.p99_ms,
            x.light_load.offered_per_sec
        ));
    }
    s.push_str("\nGroups in the cluster: ten members online on each node, one of them sends. A large group's message (read diffusion) is published once to the group's subject and delivered once to each node that holds an online member; a normal group's (write diffusion) goes to each member's subject, and NATS forwards only those of members online on another node.\n\n");
    s.push_str("| members | kind | online | NATS msgs in / out per group message | NATS bytes in / out per group message |\n|---:|---|---:|---:|---:|\n");
    for g in &r.groups {
        s.push_str(&format!(
            "| {} | {} | {} | {:.1} / {:.1} | {:.0} / {:.0} |\n",
            g.members,
            if g.large { "large" } else { "normal" },
            g.online,
            g.msgs_in,
            g.msgs_out,
            g.bytes_in,
            g.bytes_out
        ));
    }
    s
}
