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
//! heartbeat locked, extrapolated to an hour. The steady window is whole heartbeat
//! periods, cut in the middle of a period: from half an interval after the first
//! heartbeat sent after the lock to half an interval after the last one before the end,
//! so each heartbeat in it comes with its answer and its QUIC ACKs. (Cut at the
//! heartbeats themselves, a boundary could fall before the server's ACK was in, and a
//! window from the lock to the end held a part-period at each edge: both moved the
//! figure by a packet or two over ten or so periods, docs/bench/cost-round12 and
//! cost-round13.) The relay logs every packet, so the steady window's packets are also
//! given by size each way: what is not a heartbeat shows as a size of its own.

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
    /// Packets per hour once the interval locked, over whole heartbeat periods (for a
    /// fixed interval, from its first heartbeat).
    pub steady_packets_per_hour: Option<f64>,
    /// Bytes per hour once locked.
    pub steady_bytes_per_hour: Option<f64>,
    /// Heartbeat periods in the steady window.
    #[serde(default)]
    pub steady_heartbeats: u64,
    /// Packets per heartbeat in the steady window, client to server.
    #[serde(default)]
    pub steady_up_per_heartbeat: f64,
    /// Packets per heartbeat in the steady window, server to client.
    #[serde(default)]
    pub steady_down_per_heartbeat: f64,
    /// The steady window's packets by direction and size, most frequent first.
    #[serde(default)]
    pub steady_sizes: Vec<SizeCount>,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Interval at the end (uncompressed), s.
    pub interval_secs: f64,
    /// Whether the smart heartbeat locked.
    pub locked: bool,
    /// NAT mappings that expired (each one costs a reconnect-like recovery).
    pub nat_expiries: u64,
}

/// Packets of one size one way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SizeCount {
    /// `up` (client to server) or `down`.
    pub direction: String,
    /// UDP payload bytes.
    pub bytes: usize,
    /// Packets.
    pub count: u64,
}

/// The packets of `log` received in `[from, to)`, by direction and size: up first,
/// then by count, most first, then by size.
fn sizes(log: &[tern_netsim::PacketRecord], from: Instant, to: Instant) -> Vec<SizeCount> {
    let mut by: std::collections::BTreeMap<(tern_netsim::Direction, usize), u64> =
        Default::default();
    for p in log.iter().filter(|p| p.at >= from && p.at < to) {
        *by.entry((p.direction, p.len)).or_default() += 1;
    }
    let mut out: Vec<_> = by.into_iter().collect();
    out.sort_by_key(|&((d, len), n)| (d, std::cmp::Reverse(n), len));
    out.into_iter()
        .map(|((d, bytes), count)| SizeCount {
            direction: match d {
                tern_netsim::Direction::Up => "up",
                tern_netsim::Direction::Down => "down",
            }
            .into(),
            bytes,
            count,
        })
        .collect()
}

/// A point of the steady window, half an interval after a heartbeat: the heartbeat's
/// answer and ACKs are in, the next heartbeat is not yet sent.
struct Boundary {
    at: Instant,
    stats: tern_netsim::RelayStats,
    heartbeats: u64,
}

/// Packets and bytes, both directions, between two snapshots of a relay's counters
/// `real` seconds apart, per uncompressed hour.
fn per_hour(
    a: &tern_netsim::RelayStats,
    b: &tern_netsim::RelayStats,
    real: Duration,
    compress: f64,
) -> (f64, f64) {
    let f = 3600.0 / (real.as_secs_f64() * compress);
    let packets = b.up.sent + b.down.sent - a.up.sent - a.down.sent;
    let bytes = b.up.bytes + b.down.bytes - a.up.bytes - a.down.bytes;
    (packets as f64 * f, bytes as f64 * f)
}

/// The steady window's figures: packets and bytes per (uncompressed) hour, periods,
/// and packets per heartbeat up and down. `None` with fewer than three whole periods.
fn steady(first: &Boundary, last: &Boundary, compress: f64) -> Option<(f64, f64, u64, f64, f64)> {
    let periods = last.heartbeats - first.heartbeats;
    if periods < 3 {
        return None;
    }
    let (a, b) = (&first.stats, &last.stats);
    let up = b.up.sent - a.up.sent;
    let down = b.down.sent - a.down.sent;
    let (packets, bytes) = per_hour(a, b, last.at - first.at, compress);
    Some((
        packets,
        bytes,
        periods,
        up as f64 / periods as f64,
        down as f64 / periods as f64,
    ))
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
            // Bounded: an hour of 3 s heartbeats is a few thousand packets.
            cfg.log_packets = 200_000;
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
            let is_fixed = name.starts_with("fixed");
            // The first and the latest boundary once the interval is locked, each half
            // an interval after a heartbeat (`due`: when the next one is taken).
            let (mut first, mut last): (Option<Boundary>, Option<Boundary>) = (None, None);
            let mut due: Option<Instant> = None;
            let mut seen = app.client.diagnostics().heartbeats_sent;
            while start.elapsed().as_secs_f64() < secs {
                // Fine enough for half of a compressed 3 s interval (150 ms at 10x).
                tokio::time::sleep(Duration::from_millis(10)).await;
                let d = app.client.diagnostics();
                let now = Instant::now();
                if due.is_some_and(|at| now >= at) {
                    due = None;
                    let b = Boundary {
                        at: now,
                        stats: relay.stats(),
                        heartbeats: d.heartbeats_sent,
                    };
                    if first.is_none() {
                        first = Some(b);
                    } else {
                        last = Some(b);
                    }
                }
                if d.heartbeats_sent != seen && (is_fixed || d.heartbeat_locked) {
                    due = Some(now + Duration::from_millis(d.heartbeat_interval_ms / 2));
                }
                seen = d.heartbeats_sent;
            }
            let s1 = relay.stats();
            let d = app.client.diagnostics();
            let (pph, bph) = per_hour(&s0, &s1, start.elapsed(), k);
            let window = match (&first, &last) {
                (Some(f), Some(l)) => steady(f, l, k),
                _ => None,
            };
            anyhow::Ok(Case {
                name: name.to_string(),
                nat_secs: *nat,
                packets_per_hour: pph,
                bytes_per_hour: bph,
                steady_packets_per_hour: window.map(|w| w.0),
                steady_bytes_per_hour: window.map(|w| w.1),
                steady_heartbeats: window.map_or(0, |w| w.2),
                steady_up_per_heartbeat: window.map_or(0.0, |w| w.3),
                steady_down_per_heartbeat: window.map_or(0.0, |w| w.4),
                steady_sizes: match (&first, &last, window) {
                    (Some(f), Some(l), Some(_)) => sizes(&relay.packets(), f.at, l.at),
                    _ => Vec::new(),
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: f64, up: u64, down: u64, heartbeats: u64) -> Boundary {
        let mut stats = tern_netsim::RelayStats::default();
        stats.up.sent = up;
        stats.up.bytes = up * 50;
        stats.down.sent = down;
        stats.down.bytes = down * 40;
        Boundary {
            at: start + Duration::from_secs_f64(secs),
            stats,
            heartbeats,
        }
    }

    #[test]
    fn the_steady_window_counts_whole_heartbeat_periods() {
        let t = Instant::now();
        // 10 periods of 10.8 s (108 s uncompressed at 10x): one packet each way per
        // heartbeat, and 2 more packets up somewhere in the window.
        let (first, last) = (at(t, 5.0, 7, 4, 6), at(t, 113.0, 19, 14, 16));
        let (pph, bph, periods, up, down) = steady(&first, &last, 10.0).unwrap();
        assert_eq!(periods, 10);
        assert!((up - 1.2).abs() < 1e-9 && (down - 1.0).abs() < 1e-9);
        // 22 packets in 1,080 uncompressed seconds: 73.3 an hour.
        assert!((pph - 22.0 * 3600.0 / 1080.0).abs() < 1e-6, "{pph}");
        assert!((bph - (12.0 * 50.0 + 10.0 * 40.0) * 3600.0 / 1080.0).abs() < 1e-6);
        // Fewer than three whole periods: no steady figure.
        assert!(steady(&first, &at(t, 26.6, 9, 6, 8), 10.0).is_none());
    }

    #[test]
    fn the_window_packets_are_given_by_direction_and_size() {
        use tern_netsim::{Direction, PacketRecord};
        let t = Instant::now();
        let p = |secs: f64, direction, len| PacketRecord {
            at: t + Duration::from_secs_f64(secs),
            direction,
            len,
            copies: 1,
        };
        let log = [
            p(0.5, Direction::Up, 48), // before the window
            p(1.0, Direction::Up, 48),
            p(1.1, Direction::Down, 32),
            p(2.0, Direction::Up, 48),
            p(2.1, Direction::Down, 32),
            p(2.5, Direction::Down, 70),
            p(2.6, Direction::Up, 33),
            p(3.0, Direction::Up, 48), // at the window's end: the next one's
        ];
        let got = sizes(&log, t + Duration::from_secs(1), t + Duration::from_secs(3));
        let want = [
            ("up", 48, 2),
            ("up", 33, 1),
            ("down", 32, 2),
            ("down", 70, 1),
        ];
        assert_eq!(
            got.iter()
                .map(|c| (c.direction.as_str(), c.bytes, c.count))
                .collect::<Vec<_>>(),
            want
        );
    }
}
