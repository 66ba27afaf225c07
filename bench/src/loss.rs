//! Benchmark 3: delivery under loss on the real stack — Tern's two uplink designs
//! (sends in datagrams under the client's QoS engine, or on the QUIC stream) and
//! MobileIMSDK's push schedule, same seeds, same run.
//!
//! For each loss rate and RTT, one server per profile is started side by side:
//! *datagram* (the defaults: `Uplink::Datagram`, `--push-qos adaptive`), *stream*
//! (`Uplink::Stream`, adaptive pushes) and *mobileimsdk* (datagram uplink,
//! `--push-qos mobileimsdk`). Each gets its own `tern-netsim` relay with the same
//! impairment and the same seed, and two `tern-client`s (alice sends, bob receives)
//! through it. Alice sends at a steady
//! chat rate; the time is from `send_text` to bob's listener seeing the message.
//! A message not seen by the deadline counts as undelivered; a message alice's
//! client reports `Failed` counts as failed. Under the fixed schedule the server gives
//! pushes up (by design) and the message reaches bob only when a later push reveals
//! the gap and his client pulls it — that is what the tail shows.
//!
//! *tcp* runs the same clients over TLS over TCP (`TransportMode::Tcp`): a
//! `tern-netsim` TCP relay adds the same delay, and nftables drops the same share of
//! TCP packets each way (real loss, repaired by TCP), which is where QUIC's design
//! shows. It needs `nft` and root.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tern_client::Uplink;
use tern_netsim::{RelayConfig, RelayHandle};
use tern_protocol::sim::LinkConfig;

use crate::app::{App, until};
use crate::serverproc::ServerProc;
use crate::stats::Latency;
use crate::ui;

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Messages per run.
    #[arg(long, default_value_t = 500)]
    pub messages: usize,
    /// Messages per second alice sends.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Loss rates each way, in %.
    #[arg(long, value_delimiter = ',', default_value = "0,10,30,50")]
    pub loss: Vec<u32>,
    /// Round-trip times, in ms (half each way, ±10 % jitter).
    #[arg(long, value_delimiter = ',', default_value = "100,300")]
    pub rtt: Vec<u64>,
    /// Messages sent back to back in each burst (1: evenly paced at `rate`); bursts
    /// start every `burst / rate` seconds. The last message of each burst is the
    /// "tail": nothing behind it reveals its loss (`Run::tail`).
    #[arg(long, default_value_t = 1)]
    pub burst: usize,
    /// RNG seed of the relays.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Seconds after the last send to wait for stragglers.
    #[arg(long, default_value_t = 60)]
    pub deadline: u64,
    /// Profiles run side by side: datagram, nocopies (datagram without copies on a lossy
    /// path), cubic (datagram with QUIC's CUBIC instead of BBR on both ends), before
    /// (CUBIC and no copies: the datagram uplink before both), stream,
    /// mobileimsdk, tcp (TLS over TCP through a delaying relay with
    /// nftables loss; needs root).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "datagram,stream,mobileimsdk"
    )]
    pub profiles: Vec<String>,
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Run {
    /// "datagram", "stream" or "mobileimsdk" (older results: "adaptive", the stream
    /// uplink with adaptive pushes).
    pub profile: String,
    /// Loss each way, %.
    pub loss_pct: u32,
    /// Round-trip time, ms.
    pub rtt_ms: u64,
    /// Messages sent.
    pub sent: usize,
    /// Seen by bob before the deadline.
    pub received: usize,
    /// Reported failed to alice.
    pub failed: u64,
    /// Pushes the server gave up on (its `tern_push_failed_total`).
    pub pushes_given_up: u64,
    /// Push retransmissions (its `tern_push_retransmissions_total`).
    pub push_retransmissions: u64,
    /// Send-to-receive time of the received ones.
    pub latency: Latency,
    /// Of that, send until alice's client saw it stored: the send's whole round trip,
    /// the answer's way back included (named "uplink" in results before `to_server`).
    pub uplink: Latency,
    /// And from then until bob's listener saw it (so `uplink + downlink` is the end to
    /// end; the answer's way back is counted in `uplink` and left out of this).
    pub downlink: Latency,
    /// One way up: send until the server stored it (the message's `server_ts_ms`, the
    /// server's clock on the same machine; ms resolution).
    #[serde(default)]
    pub to_server: Latency,
    /// One way down: stored on the server until bob's listener saw it (push QoS, or a
    /// gap pull). `to_server + from_server` is the end to end.
    #[serde(default)]
    pub from_server: Latency,
    /// Send-to-receive time of the last message of each burst (with `--burst`).
    #[serde(default)]
    pub tail: Latency,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Messages per run.
    pub messages: usize,
    /// Send rate.
    pub rate: f64,
    /// Runs, the profiles interleaved.
    pub runs: Vec<Run>,
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let mut runs = vec![];
    for &rtt in &args.rtt {
        for &loss in &args.loss {
            let bar = ui::spinner(&format!("{loss}% loss, {rtt} ms RTT"));
            let all = futures_util::future::join_all(
                args.profiles.iter().map(|p| one(args, p, loss, rtt)),
            )
            .await;
            let mut line = format!("{loss}% loss, {rtt} ms RTT:");
            for r in all {
                let r = r?;
                line += &format!(
                    " {} to server p50/p99 {:.0}/{:.0} / from server {:.0}/{:.0} / acked {:.0}/{:.0} / all {:.0}/{:.0} ms ({}/{})",
                    r.profile,
                    r.to_server.p50_ms,
                    r.to_server.p99_ms,
                    r.from_server.p50_ms,
                    r.from_server.p99_ms,
                    r.uplink.p50_ms,
                    r.uplink.p99_ms,
                    r.latency.p50_ms,
                    r.latency.p99_ms,
                    r.received,
                    r.sent
                );
                if args.burst > 1 {
                    line += &format!(" tail p99 {:.0} ms", r.tail.p99_ms);
                }
                line += ";";
                runs.push(r);
            }
            ui::done(&bar, line);
        }
    }
    Ok(Report {
        messages: args.messages,
        rate: args.rate,
        runs,
    })
}

async fn relay(server: SocketAddr, loss: f64, rtt: u64, seed: u64) -> anyhow::Result<RelayHandle> {
    let link = LinkConfig {
        loss,
        delay: Duration::from_millis(rtt / 2),
        jitter: Duration::from_millis(rtt / 10),
        reorder: 0.0,
        reorder_delay: Duration::ZERO,
        duplicate: 0.0,
        blackouts: vec![],
        rate: None,
    };
    let mut cfg = RelayConfig::new("127.0.0.1:0".parse()?, server);
    cfg.up = link.clone();
    cfg.down = link;
    cfg.seed = seed;
    Ok(tern_netsim::start(cfg).await?)
}

/// The TCP path of the `tcp` profile: a `tern-netsim` TCP relay adding half the RTT
/// each way, and nftables dropping `loss` % of the TCP packets to and from it (real
/// loss, repaired by TCP itself). The rules are removed when this is dropped.
struct TcpPath {
    relay: tern_netsim::tcp::TcpRelayHandle,
    table: String,
}

impl TcpPath {
    async fn start(server: SocketAddr, loss: u32, rtt: u64) -> anyhow::Result<TcpPath> {
        let mut cfg = tern_netsim::tcp::TcpRelayConfig::new("127.0.0.1:0".parse()?, server);
        cfg.delay = Duration::from_millis(rtt / 2);
        let relay = tern_netsim::tcp::start_tcp(cfg).await?;
        let port = relay.local_addr().port();
        let table = format!("tern_bench_{port}");
        let nft = |args: &[&str]| -> anyhow::Result<()> {
            let out = std::process::Command::new("nft").args(args).output();
            match out {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => anyhow::bail!(
                    "nft {}: {} (the tcp profile needs nftables and root)",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => anyhow::bail!("nft: {e} (the tcp profile needs nftables and root)"),
            }
        };
        nft(&["add", "table", "inet", &table])?;
        let path = TcpPath { relay, table };
        nft(&[
            "add",
            "chain",
            "inet",
            &path.table,
            "out",
            "{ type filter hook output priority 0; }",
        ])?;
        if loss > 0 {
            let loss = loss.to_string();
            let port = port.to_string();
            for dir in ["dport", "sport"] {
                nft(&[
                    "add",
                    "rule",
                    "inet",
                    &path.table,
                    "out",
                    "tcp",
                    dir,
                    &port,
                    "numgen",
                    "random",
                    "mod",
                    "100",
                    "<",
                    &loss,
                    "drop",
                ])?;
            }
        }
        Ok(path)
    }
}

impl Drop for TcpPath {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .output();
    }
}

async fn one(args: &Args, profile: &str, loss: u32, rtt: u64) -> anyhow::Result<Run> {
    let (push_qos, uplink) = match profile {
        "datagram" | "tcp" | "nocopies" | "cubic" | "before" => ("adaptive", Uplink::Datagram),
        "stream" => ("adaptive", Uplink::Stream),
        "mobileimsdk" => ("mobileimsdk", Uplink::Datagram),
        other => {
            anyhow::bail!("unknown profile {other} (datagram, nocopies, stream, mobileimsdk, tcp)")
        }
    };
    // "nocopies": the datagram uplink without copies on a lossy path (the design before
    // `tern_protocol::redundancy`), for side-by-side runs.
    let copies = profile != "nocopies" && profile != "before";
    // "cubic": QUIC's loss-based controller on both ends instead of BBR; "before":
    // CUBIC and no copies, the datagram uplink as it was before both.
    let congestion = if profile == "cubic" || profile == "before" {
        tern_protocol::io::Congestion::Cubic
    } else {
        tern_protocol::io::Congestion::Bbr
    };
    let server = ServerProc::start(&[
        "--push-qos",
        push_qos,
        "--loss-copies",
        if copies { "true" } else { "false" },
        "--congestion",
        congestion.as_str(),
    ])?;
    let r = relay(server.addr, loss as f64 / 100.0, rtt, args.seed).await?;
    let tcp = if profile == "tcp" {
        let addr = server
            .tcp
            .ok_or_else(|| anyhow::anyhow!("server has no TCP listener"))?;
        Some(TcpPath::start(addr, loss, rtt).await?)
    } else {
        None
    };
    let tcp_addr = tcp.as_ref().map(|p| p.relay.local_addr().to_string());
    let transport = |c: &mut tern_client::ClientConfig| match &tcp_addr {
        Some(a) => {
            c.transport = tern_client::TransportMode::Tcp;
            c.tcp_server = Some(a.clone());
        }
        None => c.transport = tern_client::TransportMode::Quic,
    };
    let dir = tempfile::tempdir()?;
    let connect = Duration::from_secs(180);
    let alice = App::start(
        &server,
        r.local_addr(),
        &dir.path().join("a"),
        "alice",
        connect,
        |c| {
            c.uplink = uplink;
            c.loss_copies = copies;
            c.congestion = congestion;
            transport(c);
        },
    )
    .await?;
    let bob = App::start(
        &server,
        r.local_addr(),
        &dir.path().join("b"),
        "bob",
        connect,
        |c| {
            c.congestion = congestion;
            transport(c);
        },
    )
    .await?;
    let gap = Duration::from_secs_f64(1.0 / args.rate);
    let mut sent_at = Vec::with_capacity(args.messages);
    let mut local_ids = Vec::with_capacity(args.messages);
    let start = Instant::now();
    // The server's timestamps are Unix ms: this maps them onto `Instant`s.
    let start_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0;
    let at_server =
        |ts: u64| start + Duration::from_secs_f64(((ts as f64 - start_unix_ms) / 1000.0).max(0.0));
    let burst = args.burst.max(1);
    for i in 0..args.messages {
        tokio::time::sleep_until((start + gap * (i / burst * burst) as u32).into()).await;
        sent_at.push(Instant::now());
        local_ids.push(alice.client.send_text("bob", &format!("m{i}"))?.local_id);
    }
    let n = args.messages;
    until(Duration::from_secs(args.deadline), || bob.seen.count() >= n).await;
    let received = bob.seen.received.lock().expect("lock").clone();
    let stored = alice.seen.stored_at.lock().expect("lock").clone();
    let server_ts = bob.seen.server_ts.lock().expect("lock").clone();
    let (mut samples, mut up, mut down, mut tail) = (vec![], vec![], vec![], vec![]);
    let (mut to_server, mut from_server) = (vec![], vec![]);
    for (i, t) in sent_at.iter().enumerate() {
        let text = format!("m{i}");
        let Some(r) = received.get(&text) else {
            continue;
        };
        samples.push(r.duration_since(*t));
        if burst > 1 && ((i + 1) % burst == 0 || i + 1 == n) {
            tail.push(r.duration_since(*t));
        }
        if let Some(s) = stored.get(&local_ids[i]) {
            up.push(s.duration_since(*t));
            down.push(r.saturating_duration_since(*s));
        }
        if let Some(&ts) = server_ts.get(&text) {
            let s = at_server(ts);
            to_server.push(s.saturating_duration_since(*t));
            from_server.push(r.saturating_duration_since(s));
        }
    }
    let metrics = crate::metrics::scrape(server.http)
        .await
        .unwrap_or_default();
    let failed = *alice.seen.failed.lock().expect("lock");
    Ok(Run {
        profile: profile.into(),
        loss_pct: loss,
        rtt_ms: rtt,
        sent: n,
        received: received.len(),
        failed,
        pushes_given_up: crate::metrics::value(&metrics, "tern_push_failed_total") as u64,
        push_retransmissions: crate::metrics::value(&metrics, "tern_push_retransmissions_total")
            as u64,
        latency: Latency::of(samples),
        uplink: Latency::of(up),
        downlink: Latency::of(down),
        to_server: Latency::of(to_server),
        from_server: Latency::of(from_server),
        tail: Latency::of(tail),
    })
}
