//! The two store backends side by side, in one run on one machine: relay capacity
//! (closed loop, `tern-bench throughput`'s method) with the server's and PostgreSQL's
//! CPU per message, latency at 50 % of each one's capacity, and group fan-out write
//! cost (`tern-bench fanout`'s method, members offline), on SQLite and on PostgreSQL
//! (a new database per phase on the server `--postgres` names, `synchronous_commit`
//! as that server has it: on by default).
//!
//! Writes `--out` (markdown, with the exact command, the machine and PostgreSQL's
//! settings) and prints JSON.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::suite::Meta;
use crate::{fanout, throughput, ui};

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// A PostgreSQL server and a role that may create databases.
    #[arg(long, env = "TERN_TEST_PG")]
    pub postgres: String,
    /// Connected clients in the throughput phases.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 8)]
    pub secs: u64,
    /// Writer lanes of the PostgreSQL store.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Group sizes for the fan-out phase (write diffusion).
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub sizes: Vec<usize>,
    /// The load of the latency phase, % of each backend's capacity.
    #[arg(long, default_value_t = 50)]
    pub load: u32,
    /// Tiny sizes: proves the program runs, measures nothing.
    #[arg(long)]
    pub quick: bool,
    /// Markdown report to write.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// One backend's numbers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Backend {
    /// `sqlite` or `postgres`.
    pub store: String,
    /// Deliveries per second, closed loop.
    pub capacity_per_sec: f64,
    /// Server process CPU per delivered message, µs.
    pub server_us_per_msg: f64,
    /// PostgreSQL processes' CPU per delivered message, µs.
    pub postgres_us_per_msg: f64,
    /// Latency at 50 % of capacity.
    pub half_load: throughput::LoadPoint,
    /// Fan-out rows (the 1:1 baseline first).
    pub fanout: Vec<fanout::Row>,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Provenance.
    pub meta: Meta,
    /// PostgreSQL's version and durability settings.
    pub postgres: String,
    /// SQLite, then PostgreSQL.
    pub backends: Vec<Backend>,
}

async fn scratch(base: &str) -> anyhow::Result<String> {
    tern_server::store::postgres::testing::scratch_database(base)
        .await
        .context("create a PostgreSQL database for the run")
}

/// `SHOW` of a few settings, for the report.
async fn postgres_settings(url: &str) -> anyhow::Result<String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut out = vec![];
    for name in [
        "server_version",
        "synchronous_commit",
        "fsync",
        "shared_buffers",
        "max_connections",
    ] {
        let v: String = client.query_one(&format!("SHOW {name}"), &[]).await?.get(0);
        out.push(format!("{name} = {v}"));
    }
    Ok(out.join(", "))
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let started = Instant::now();
    let q = args.quick;
    let tp = throughput::Args {
        clients: if q { 20 } else { args.clients },
        endpoints: 4,
        window: 2,
        secs: if q { 1 } else { args.secs },
        loads: vec![args.load],
        baseline: None,
    };
    let postgres = postgres_settings(&args.postgres).await?;
    let mut backends = vec![];
    for store in ["sqlite", "postgres"] {
        let url = if store == "postgres" {
            Some(scratch(&args.postgres).await?)
        } else {
            None
        };
        let writers = args.writers.to_string();
        let mut extra: Vec<&str> = vec![];
        if let Some(url) = &url {
            extra.extend(["--store", url.as_str(), "--store-writers", &writers]);
        }
        let capacity = throughput::capacity_and_half_load(None, &tp, &extra, store, &[50]).await?;
        let fan = fanout::run(&fanout::Args {
            sizes: if q { vec![10] } else { args.sizes.clone() },
            large_sizes: if q { vec![100] } else { vec![1000] },
            sequential: if q { 5 } else { 30 },
            burst: if q { 10 } else { 300 },
            online_max: 0,
            quick: false,
            out: None,
            store: match url {
                Some(_) => Some(scratch(&args.postgres).await?),
                None => None,
            },
        })
        .await?;
        ui::say(format!(
            "{store}: {:.0} msg/s, server {:.0} µs/msg, postgres {:.0} µs/msg, p99 at 50 % {:.1} ms",
            capacity.per_sec,
            capacity.server_us_per_msg,
            capacity.postgres_us_per_msg,
            capacity.half_load.latency.p99_ms
        ));
        backends.push(Backend {
            store: store.into(),
            capacity_per_sec: capacity.per_sec,
            server_us_per_msg: capacity.server_us_per_msg,
            postgres_us_per_msg: capacity.postgres_us_per_msg,
            half_load: capacity.half_load,
            fanout: fan.rows,
        });
    }
    let report = Report {
        meta: Meta::now(q, started),
        postgres,
        backends,
    };
    ui::write_report(args.out.as_deref(), &markdown(&report))?;
    Ok(report)
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("# Store backends side by side: SQLite and PostgreSQL\n\n");
    s.push_str("Generated by `tern-bench stores`; analysis in [analysis.md](analysis.md#postgresql-store).\n\n");
    s.push_str(&format!(
        "{}- PostgreSQL: {}\n\n",
        r.meta.lines(),
        r.postgres
    ));
    s.push_str("Relay capacity: clients in a ring, closed loop, a message counts when the receiver has it (stored durably first). CPU per message: the server process, and every `postgres` process (the database's share), over the capacity window. Latency: open loop at 50 % of that backend's capacity, send to receive.\n\n");
    s.push_str("| store | msg/s | vs SQLite | server µs/msg | postgres µs/msg | p50 ms at 50 % | p99 ms at 50 % |\n|---|---:|---:|---:|---:|---:|---:|\n");
    let base = r.backends.first().map_or(1.0, |b| b.capacity_per_sec);
    for b in &r.backends {
        s.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} |\n",
            b.store,
            b.capacity_per_sec,
            b.capacity_per_sec / base,
            b.server_us_per_msg,
            b.postgres_us_per_msg,
            b.half_load.latency.p50_ms,
            b.half_load.latency.p99_ms
        ));
    }
    s.push_str("\nGroup fan-out, members offline: one message at a time (send to SendResult: the commit of the message and its N timeline entries), then a pipelined burst. The first row is a 1:1 message.\n\n");
    s.push_str("| members | SQLite commit p50 / p99 ms | PostgreSQL commit p50 / p99 ms | SQLite burst msg/s | PostgreSQL burst msg/s |\n|---:|---:|---:|---:|---:|\n");
    if let [lite, pg] = &r.backends[..] {
        for (a, b) in lite.fanout.iter().zip(&pg.fanout) {
            s.push_str(&format!(
                "| {}{} | {:.1} / {:.1} | {:.1} / {:.1} | {:.0} | {:.0} |\n",
                a.members,
                if a.members == 2 {
                    " (1:1)"
                } else if a.large {
                    " large"
                } else {
                    ""
                },
                a.commit.p50_ms,
                a.commit.p99_ms,
                b.commit.p50_ms,
                b.commit.p99_ms,
                a.burst_msgs_per_sec,
                b.burst_msgs_per_sec
            ));
        }
    }
    s
}
