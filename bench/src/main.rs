//! `tern-bench`: the load generator and benchmark report. See docs/bench/README.md.
//!
//! Each subcommand runs one benchmark and prints its JSON summary on stdout (progress
//! on stderr); `all` runs the suite into one JSON file, and `report` turns that file
//! into docs/bench/README.md with tables and PNG plots.

mod app;
mod catchup;
mod cluster;
mod echo;
mod fanout;
mod idle;
mod idle_cost;
mod loss;
mod machine;
mod metrics;
mod raw;
mod report;
mod serverproc;
mod stats;
mod stores;
mod suite;
mod throughput;
mod transports;
mod ui;
mod wire;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(version, about = "Tern load generator and benchmark report")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Relay throughput and latency vs a datagram-echo ceiling.
    Throughput(throughput::Args),
    /// Server memory per idle session, and a reconnect storm.
    Idle(idle::Args),
    /// Delivery time under loss: adaptive push QoS vs the MobileIMSDK schedule.
    Loss(loss::Args),
    /// Packets and bytes per idle hour: smart vs fixed heartbeats behind NATs.
    IdleCost(idle_cost::Args),
    /// Bytes on the wire per 20-byte message.
    Wire(wire::Args),
    /// A fresh client catching up with a large backlog.
    Catchup(catchup::Args),
    /// Group fan-out cost at 10..10,000 members vs a 1:1 message.
    Fanout(fanout::Args),
    /// QUIC, TLS over TCP and WebSocket side by side: login and first message with UDP
    /// open and blocked, pipelined msg/s, memory per idle session.
    Transports(transports::Args),
    /// The SQLite and PostgreSQL stores side by side: capacity, CPU, latency, fan-out.
    Stores(stores::Args),
    /// One node against a cluster of three (PostgreSQL + NATS): capacity, CPU, latency of
    /// a cross-node push, NATS traffic per message and per large-group message.
    Cluster(cluster::Args),
    /// All six, written to one JSON file.
    All(suite::Args),
    /// docs/bench/README.md and plots from a results file.
    Report(report::Args),
    /// The datagram-echo baseline server (started by the benchmarks themselves).
    #[command(hide = true)]
    EchoServer {
        /// Where to write the certificate (DER).
        #[arg(long)]
        cert_out: std::path::PathBuf,
        /// Commit each datagram to this SQLite file before echoing it (the durable echo).
        #[arg(long)]
        durable: Option<std::path::PathBuf>,
    },
}

fn print<T: serde::Serialize>(r: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(r)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TERN_BENCH_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // One TLS crypto provider for everything in the process (quinn, reqwest): ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Throughput(a) => print(&throughput::run(&a).await?),
            Command::Idle(a) => print(&idle::run(&a).await?),
            Command::Loss(a) => print(&loss::run(&a).await?),
            Command::IdleCost(a) => print(&idle_cost::run(&a).await?),
            Command::Wire(a) => print(&wire::run(&a).await?),
            Command::Catchup(a) => print(&catchup::run(&a).await?),
            Command::Fanout(a) => print(&fanout::run(&a).await?),
            Command::Stores(a) => print(&stores::run(&a).await?),
            Command::Cluster(a) => print(&cluster::run(&a).await?),
            Command::Transports(a) => print(&transports::run(&a).await?),
            Command::All(a) => suite::run(&a).await.map(drop),
            Command::Report(a) => report::run(&a),
            Command::EchoServer { cert_out, durable } => {
                echo::serve(&cert_out, durable.as_deref()).await
            }
        }
    })
}
