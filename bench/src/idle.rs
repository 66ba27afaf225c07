//! Benchmark 2: idle sessions — server memory per logged-in idle session, and the
//! handshake + login rate when all of them reconnect at once.
//!
//! Sessions are raw clients spread over several UDP endpoints. Memory is the server
//! process's RSS (from `/proc`) after the logins settle, minus its RSS before the first
//! login, divided by the sessions. The reconnect storm closes every connection and
//! logs all users in again with many handshakes in flight, as after a server restart
//! or a mobile network flap. The baseline is the same number of idle connections to a
//! bare quinn endpoint (`EchoProc`): the part of the cost that is QUIC's.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::raw::{self, Ignore};
use crate::serverproc::{EchoProc, ServerProc};
use crate::ui;

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Session counts to measure at (ascending; each step adds sessions).
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    pub sessions: Vec<usize>,
    /// Client UDP endpoints.
    #[arg(long, default_value_t = 32)]
    pub endpoints: usize,
    /// Handshakes in flight during logins and the storm.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
}

/// One measurement point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Point {
    /// Idle sessions held.
    pub sessions: usize,
    /// Server RSS with them, bytes.
    pub rss: u64,
    /// (rss - baseline) / sessions.
    pub bytes_per_session: f64,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Server RSS before any login, bytes.
    pub baseline_rss: u64,
    /// Memory at each session count.
    pub points: Vec<Point>,
    /// Sessions that reconnected in the storm.
    pub storm_sessions: usize,
    /// Seconds until all were logged in again.
    pub storm_secs: f64,
    /// Handshake + login rate in the storm, sessions/s.
    pub storm_per_sec: f64,
    /// Login rate during the initial ramp (sessions/s), for comparison.
    pub ramp_per_sec: f64,
    /// Baseline: idle connections held by a bare quinn echo endpoint.
    pub quic_floor_connections: usize,
    /// Baseline: its RSS growth per idle connection, bytes.
    pub quic_floor_bytes_per_conn: f64,
}

async fn settle_rss(server: &ServerProc) -> anyhow::Result<u64> {
    // Give the allocator and the session tasks a moment to reach a steady state.
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.rss()
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let max = args.sessions.iter().copied().max().unwrap_or(0);
    let server = ServerProc::start(&["--max-sessions", &(max + 10).to_string()])?;
    let endpoints = raw::endpoints(&server.cert, args.endpoints)?;
    let baseline_rss = settle_rss(&server).await?;
    let name = |i: usize| format!("idle{i}");
    let sink: Arc<dyn raw::Sink> = Arc::new(Ignore);
    let mut clients = vec![];
    let mut points = vec![];
    let mut ramp = Duration::ZERO;
    for &target in &args.sessions {
        let have = clients.len();
        if target <= have {
            continue;
        }
        let bar = ui::bar((target - have) as u64, &format!("logging in to {target}"));
        let (more, took) = raw::login_many(
            &endpoints,
            server.addr,
            name,
            have..target,
            args.concurrency,
            sink.clone(),
            &bar,
        )
        .await?;
        bar.finish();
        ramp += took;
        clients.extend(more);
        let rss = settle_rss(&server).await?;
        let bytes_per_session = (rss.saturating_sub(baseline_rss)) as f64 / clients.len() as f64;
        ui::say(format!(
            "{} idle sessions: server RSS {:.1} MiB, {:.1} KiB per session",
            clients.len(),
            rss as f64 / 1048576.0,
            bytes_per_session / 1024.0
        ));
        points.push(Point {
            sessions: clients.len(),
            rss,
            bytes_per_session,
        });
    }
    let n = clients.len();
    let ramp_per_sec = n as f64 / ramp.as_secs_f64().max(1e-9);

    // Reconnect storm: everyone drops and comes back at once.
    for c in &clients {
        c.close();
    }
    drop(clients);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bar = ui::bar(n as u64, "reconnect storm");
    let (clients, took) = raw::login_many(
        &endpoints,
        server.addr,
        name,
        0..n,
        args.concurrency,
        sink,
        &bar,
    )
    .await?;
    bar.finish();
    let storm_per_sec = n as f64 / took.as_secs_f64();
    ui::say(format!(
        "reconnect storm: {n} sessions in {:.1} s ({storm_per_sec:.0}/s)",
        took.as_secs_f64()
    ));
    for c in &clients {
        c.close();
    }
    drop(clients);
    drop(server);

    // Baseline: the same number of idle QUIC connections (as many as the first point)
    // to a bare quinn endpoint: what QUIC itself costs per connection.
    let floor_n = args.sessions.first().copied().unwrap_or(0);
    let echo = EchoProc::start(false)?;
    let endpoints = raw::endpoints(&echo.cert, args.endpoints)?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = echo.rss()?;
    let bar = ui::bar(floor_n as u64, "quic floor: connecting");
    let conns: Vec<quinn::Connection> = futures_util::stream::iter(0..floor_n)
        .map(|i| {
            let endpoint = endpoints[i % endpoints.len()].clone();
            let addr = echo.addr;
            async move { anyhow::Ok(endpoint.connect(addr, "localhost")?.await?) }
        })
        .buffer_unordered(args.concurrency)
        .inspect(|_| bar.inc(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    bar.finish();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quic_floor_bytes_per_conn =
        echo.rss()?.saturating_sub(before) as f64 / conns.len().max(1) as f64;
    ui::say(format!(
        "quic floor: {} idle connections to a bare quinn endpoint, {:.1} KiB each",
        conns.len(),
        quic_floor_bytes_per_conn / 1024.0
    ));
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    Ok(Report {
        baseline_rss,
        points,
        storm_sessions: n,
        storm_secs: took.as_secs_f64(),
        storm_per_sec,
        ramp_per_sec,
        quic_floor_connections: conns.len(),
        quic_floor_bytes_per_conn,
    })
}
