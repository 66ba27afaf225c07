//! Benchmark 4: what an idle, backgrounded client costs per hour — packets and bytes
//! on the wire, both directions, every QUIC packet counted by the relay.
//!
//! Four clients, each behind its own `tern-netsim` NAT: Tern's smart heartbeat behind
//! a 30 s and a 120 s NAT, and fixed 3 s and 15 s heartbeats (MobileIMSDK's UDP and
//! TCP defaults) behind the 30 s NAT. An hour is long for a benchmark, so time is
//! compressed by `--compress`: NAT timeouts and every heartbeat duration are divided by
//! it and the "hour" lasts 3600/compress seconds. Heartbeat counts and packets per
//! heartbeat do not depend on the compression; QUIC's own timers (ACK delay, PTO) are
//! not scaled, which only matters if they approach the compressed intervals.
//! Reported: the whole first hour (learning included) and the steady state after the
//! heartbeat locked, extrapolated to an hour.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tern_netsim::RelayConfig;
use tern_protocol::heartbeat::{HeartbeatConfig, HeartbeatProfile};

use crate::app::App;
use crate::serverproc::ServerProc;
use crate::ui;

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Time compression factor.
    #[arg(long, default_value_t = 10.0)]
    pub compress: f64,
    /// Real seconds to run (default: one compressed hour, 3600/compress).
    #[arg(long)]
    pub secs: Option<f64>,
}

/// One client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Case {
    /// What it is.
    pub name: String,
    /// NAT timeout (uncompressed), s.
    pub nat_secs: f64,
    /// Packets per (uncompressed) hour, both directions, whole run.
    pub packets_per_hour: f64,
    /// Bytes per hour, both directions, whole run.
    pub bytes_per_hour: f64,
    /// Packets per hour once the interval locked (same as the whole run for fixed).
    pub steady_packets_per_hour: Option<f64>,
    /// Bytes per hour once locked.
    pub steady_bytes_per_hour: Option<f64>,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Interval at the end (uncompressed), s.
    pub interval_secs: f64,
    /// Whether the smart heartbeat locked.
    pub locked: bool,
    /// NAT mappings that expired (each one costs a reconnect-like recovery).
    pub nat_expiries: u64,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Compression used.
    pub compress: f64,
    /// Uncompressed seconds covered.
    pub covered_secs: f64,
    /// The four clients.
    pub cases: Vec<Case>,
}

fn scaled(c: &HeartbeatConfig, k: f64) -> HeartbeatConfig {
    let s = |d: Duration| d.div_f64(k);
    let p = |p: &HeartbeatProfile| HeartbeatProfile {
        min: s(p.min),
        max: s(p.max),
    };
    HeartbeatConfig {
        foreground: p(&c.foreground),
        background: p(&c.background),
        initial: s(c.initial),
        step: s(c.step),
        resolution: s(c.resolution),
        reply_timeout: s(c.reply_timeout).max(Duration::from_millis(500)),
        reprobe_after: c.reprobe_after.map(s),
        ..c.clone()
    }
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let k = args.compress;
    let secs = args.secs.unwrap_or(3600.0 / k);
    let server = ServerProc::start(&[])?;
    let cases = [
        ("Tern smart heartbeat", 30.0, HeartbeatConfig::default()),
        ("Tern smart heartbeat", 120.0, HeartbeatConfig::default()),
        (
            "fixed 3 s (MobileIMSDK UDP)",
            30.0,
            HeartbeatConfig::fixed(Duration::from_secs(3)),
        ),
        (
            "fixed 15 s (MobileIMSDK TCP)",
            30.0,
            HeartbeatConfig::fixed(Duration::from_secs(15)),
        ),
    ];
    let bar = ui::spinner(&format!("{} idle clients for {secs:.0} s", cases.len()));
    let runs = cases.iter().enumerate().map(|(i, (name, nat, hb))| {
        let server = &server;
        async move {
            let mut cfg = RelayConfig::new("127.0.0.1:0".parse()?, server.addr);
            cfg.nat_timeout = Some(Duration::from_secs_f64(nat / k));
            let relay = tern_netsim::start(cfg).await?;
            let dir = tempfile::tempdir()?;
            let hb = scaled(hb, k);
            let app = App::start(
                server,
                relay.local_addr(),
                dir.path(),
                &format!("idle{i}"),
                Duration::from_secs(20),
                |c| c.heartbeat = hb,
            )
            .await?;
            app.client.set_foreground(false);
            let start = Instant::now();
            let s0 = relay.stats();
            let mut locked_at: Option<(Instant, tern_netsim::RelayStats)> = None;
            while start.elapsed().as_secs_f64() < secs {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if locked_at.is_none() && app.client.diagnostics().heartbeat_locked {
                    locked_at = Some((Instant::now(), relay.stats()));
                }
            }
            let s1 = relay.stats();
            let d = app.client.diagnostics();
            let hour = |packets: u64, bytes: u64, real: Duration| {
                let f = 3600.0 / (real.as_secs_f64() * k);
                (packets as f64 * f, bytes as f64 * f)
            };
            let packets = |a: &tern_netsim::RelayStats, b: &tern_netsim::RelayStats| {
                (
                    b.up.sent + b.down.sent - a.up.sent - a.down.sent,
                    b.up.bytes + b.down.bytes - a.up.bytes - a.down.bytes,
                )
            };
            let (p, b) = packets(&s0, &s1);
            let (pph, bph) = hour(p, b, start.elapsed());
            let is_fixed = name.starts_with("fixed");
            let (spph, sbph) = match (&locked_at, is_fixed) {
                (_, true) => (Some(pph), Some(bph)),
                (Some((t, s)), false) if t.elapsed() > Duration::from_secs_f64(secs / 10.0) => {
                    let (p, b) = packets(s, &s1);
                    let (p, b) = hour(p, b, t.elapsed());
                    (Some(p), Some(b))
                }
                _ => (None, None),
            };
            anyhow::Ok(Case {
                name: name.to_string(),
                nat_secs: *nat,
                packets_per_hour: pph,
                bytes_per_hour: bph,
                steady_packets_per_hour: spph,
                steady_bytes_per_hour: sbph,
                heartbeats: d.heartbeats_sent,
                interval_secs: d.heartbeat_interval_ms as f64 / 1000.0 * k,
                locked: d.heartbeat_locked,
                nat_expiries: s1.nat_expiries,
            })
        }
    });
    let cases = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    ui::done(&bar, "idle cost measured".into());
    Ok(Report {
        compress: k,
        covered_secs: secs * k,
        cases,
    })
}
