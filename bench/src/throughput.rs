//! Benchmark 1: relay throughput and latency, against a datagram-echo ceiling.
//!
//! N raw clients log in; client i sends to client i+1. A message counts when the
//! receiver got its `Push` (after the server stored it durably) and acknowledged it.
//! **Capacity**: a closed loop keeps `window × N` messages in flight end to end and
//! counts deliveries per second. **Latency**: open-loop sends at 25/50/90 % of that
//! capacity, send-to-receive time from a timestamp in the body. **Ceiling**: in the same
//! run, the same number of quinn connections to an echo endpoint that returns each
//! datagram, closed loop with the same window: what QUIC on this machine can move
//! with no application in between.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_protocol::pb;
use tokio::sync::Semaphore;

use crate::raw::{self, RawClient, Sink};
use crate::serverproc::{EchoProc, ServerProc};
use crate::stats::Latency;
use crate::ui;

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Connected clients.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Client UDP endpoints the clients are spread over.
    #[arg(long, default_value_t = 8)]
    pub endpoints: usize,
    /// Messages in flight per client in the capacity phase.
    #[arg(long, default_value_t = 2)]
    pub window: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Offered loads for the latency phases, in % of the measured capacity.
    #[arg(long, value_delimiter = ',', default_value = "25,50,90")]
    pub loads: Vec<u32>,
    /// Another `tern-server` binary (an older build) measured the same way in the same
    /// run, after this one: capacity, server CPU per message, latency at the same loads.
    #[arg(long)]
    pub baseline: Option<std::path::PathBuf>,
}

/// One latency phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoadPoint {
    /// % of capacity offered.
    pub pct: u32,
    /// Messages/s offered.
    pub offered_per_sec: f64,
    /// Messages sent / received in the phase (received counted until 3 s after it).
    pub sent: u64,
    /// Received.
    pub received: u64,
    /// Refused by the server (SERVER_BUSY).
    pub refused: u64,
    /// Send-to-receive time.
    pub latency: Latency,
    /// What the sending window cost the machine, per message sent (absent in older
    /// results).
    #[serde(default)]
    pub cost: crate::machine::PhaseCost,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Connected clients.
    pub clients: usize,
    /// End-to-end deliveries per second, closed loop.
    pub capacity_per_sec: f64,
    /// The same with `--durability normal`.
    pub capacity_normal_per_sec: f64,
    /// Datagram echoes per second over as many connections (the ceiling).
    pub echo_per_sec: f64,
    /// capacity / ceiling.
    pub ratio: f64,
    /// Durable echoes per second over as many connections: each datagram committed to
    /// SQLite (`synchronous=FULL`, group commit like Tern's writer) before it is echoed
    /// (`crate::echo`). 0 in results from before it was measured.
    #[serde(default)]
    pub durable_echo_per_sec: f64,
    /// capacity / durable ceiling.
    #[serde(default)]
    pub durable_ratio: f64,
    /// The echo server's CPU per round trip (one datagram each way, and QUIC's ACKs),
    /// µs: what the network side costs per packet on this machine. 0 in results from
    /// before it was measured.
    #[serde(default)]
    pub echo_server_us_per_rt: f64,
    /// The durable echo server's CPU per round trip (the same, plus one row group-committed
    /// to SQLite), µs. 0 in results from before it was measured.
    #[serde(default)]
    pub durable_echo_server_us_per_rt: f64,
    /// Server CPU (user + system, from /proc) per delivered message in the capacity
    /// window, µs. 0 in results from before it was measured.
    #[serde(default)]
    pub server_us_per_msg: f64,
    /// Of `server_us_per_msg`, the store's writer thread (SQLite: every write, the
    /// commit and its fsync) and its WAL checkpointer thread; the rest is the network
    /// side (QUIC, TLS, the sessions, fan-out) and the store's reads. 0 in results from
    /// before it was measured.
    #[serde(default)]
    pub server_writer_us_per_msg: f64,
    /// This load generator's own CPU (the raw clients, same cores) per delivered
    /// message in the capacity window, µs: with both on one machine, capacity is at
    /// most cores × 10⁶ / (server µs + client µs). 0 in results from before it was
    /// measured.
    #[serde(default)]
    pub client_us_per_msg: f64,
    /// Sends the server refused (SERVER_BUSY) during the capacity phase.
    pub refused_in_capacity: u64,
    /// Server RSS at the end of the capacity phase, bytes.
    pub server_rss: u64,
    /// Latency at the offered loads.
    pub loads: Vec<LoadPoint>,
    /// The `--baseline` build, measured in the same run.
    #[serde(default)]
    pub baseline: Option<Baseline>,
}

/// A baseline build's numbers, measured like this build's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Baseline {
    /// The binary.
    pub bin: String,
    /// Deliveries per second, closed loop.
    pub capacity_per_sec: f64,
    /// Server CPU per delivered message, µs.
    pub server_us_per_msg: f64,
    /// Of it, the store's writer and checkpointer threads, µs (0 if the build has no
    /// thread of those names).
    #[serde(default)]
    pub server_writer_us_per_msg: f64,
    /// Latency at 50 % of its own capacity.
    pub half_load: LoadPoint,
    /// Latency at each of the loads this build was measured at, of its own capacity,
    /// run in the same order on the same database as this build's (absent in older
    /// results, where only 50 % was run, right after the capacity phase).
    #[serde(default)]
    pub loads: Vec<LoadPoint>,
}

#[derive(Default)]
struct Counter {
    delivered: AtomicU64,
    refused: AtomicU64,
    permits: Option<Arc<Semaphore>>,
    record: AtomicBool,
    samples: std::sync::Mutex<Vec<Duration>>,
}

impl Sink for Counter {
    fn on_send_result(&self, _client: usize, r: &pb::SendResult) {
        // A refusal (SERVER_BUSY when the store's queue is full) ends that message:
        // count it and give its place in the window back.
        if r.code != pb::ErrorCode::Ok as i32 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(p) = &self.permits {
                p.add_permits(1);
            }
        }
    }

    fn on_message(&self, _client: usize, m: &pb::StoredMessage) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(p) = &self.permits {
            p.add_permits(1);
        }
        if self.record.load(Ordering::Relaxed)
            && let Some(age) = raw::age_of(&m.body)
        {
            self.samples.lock().expect("lock").push(age);
        }
    }
}

fn peer(i: usize, n: usize) -> String {
    format!("tp{}", (i + 1) % n)
}

/// A server after its closed-loop capacity phase, with the clients still logged in.
struct Setup {
    /// Kept so the server lives (and is killed when the setup is dropped).
    server: ServerProc,
    clients: Arc<Vec<RawClient>>,
    sink: Arc<Counter>,
    /// What the capacity window measured.
    measured: Measured,
    /// Server RSS at the end of the capacity phase, bytes.
    rss: u64,
}

/// A capacity phase with the CPU it cost.
pub(crate) struct Capacity {
    /// Deliveries per second, closed loop.
    pub per_sec: f64,
    /// Server process CPU per delivered message, µs.
    pub server_us_per_msg: f64,
    /// Of it, the store's writer and checkpointer threads, µs.
    pub server_writer_us_per_msg: f64,
    /// CPU of every `postgres` process per delivered message, µs (0 on SQLite).
    pub postgres_us_per_msg: f64,
    /// p50 / p99 at 50 % of capacity, ms.
    pub half_load: LoadPoint,
    /// Every latency phase, in the order run.
    pub loads: Vec<LoadPoint>,
}

/// Capacity (with server and PostgreSQL CPU per message) and latency at `loads` % of
/// it, in that order, and at 50 % if `loads` has no 50 (run last), on a server (`bin`, or
/// this build's) started with `extra` flags.
pub(crate) async fn capacity_and_half_load(
    bin: Option<&std::path::Path>,
    args: &Args,
    extra: &[&str],
    label: &str,
    loads: &[u32],
) -> anyhow::Result<Capacity> {
    let s = measure_capacity(bin, args, extra, label).await?;
    let with_half: Vec<u32> = loads
        .iter()
        .copied()
        .chain((!loads.contains(&50)).then_some(50))
        .collect();
    let points = s.load_phases(args, &with_half).await;
    for c in s.clients.iter() {
        c.close();
    }
    let half_load = points
        .iter()
        .find(|l| l.pct == 50)
        .cloned()
        .expect("50 % is run");
    Ok(Capacity {
        per_sec: s.measured.per_sec,
        server_us_per_msg: s.measured.us_per_msg(s.measured.server_cpu),
        server_writer_us_per_msg: s.measured.us_per_msg(s.measured.server_writer_cpu),
        postgres_us_per_msg: s.measured.us_per_msg(s.measured.postgres_cpu),
        half_load,
        loads: points,
    })
}

/// Starts a server (`bin`, or this build's) with `extra` flags, logs the clients in, and
/// measures the closed-loop capacity.
async fn measure_capacity(
    bin: Option<&std::path::Path>,
    args: &Args,
    extra: &[&str],
    label: &str,
) -> anyhow::Result<Setup> {
    let server = ServerProc::start_bin(bin, extra)?;
    let ring = Ring::login(args, &[server.addr], &server.cert).await?;
    let pid = server.pid();
    let server_cpu = move || ServerCpu::of(&[pid]);
    let measured = ring.closed_loop(args, label, &server_cpu).await;
    let rss = server.rss().unwrap_or(0);
    Ok(Setup {
        server,
        clients: ring.clients,
        sink: ring.sink,
        measured,
        rss,
    })
}

impl Setup {
    /// Open-loop latency at each of `loads` % of the measured capacity, in that order.
    async fn load_phases(&self, args: &Args, loads: &[u32]) -> Vec<LoadPoint> {
        let mut points = vec![];
        for &pct in loads {
            points.push(
                load_phase(
                    &self.clients,
                    &self.sink,
                    args.clients.max(2),
                    self.measured.per_sec,
                    pct,
                    args.secs,
                    &[self.server.pid()],
                )
                .await,
            );
        }
        points
    }
}

/// Clients in a ring (client i sends to client i + 1), logged in to one or more
/// servers (client i to server i mod k: in a cluster every message crosses nodes).
pub(crate) struct Ring {
    clients: Arc<Vec<RawClient>>,
    sink: Arc<Counter>,
    permits: Arc<Semaphore>,
}

/// What a closed-loop window measured.
pub(crate) struct Measured {
    /// Deliveries per second.
    pub per_sec: f64,
    /// Deliveries in the window.
    pub delivered: u64,
    /// Refused sends in the window.
    pub refused: u64,
    /// CPU seconds of the servers (as the caller counts them) in the window.
    pub server_cpu: f64,
    /// Of them, the store writer threads'.
    pub server_writer_cpu: f64,
    /// CPU seconds of every `postgres` process in the window.
    pub postgres_cpu: f64,
    /// CPU seconds of this process (the load generator) in the window.
    pub client_cpu: f64,
}

/// CPU seconds of server processes so far: all of it, and their store writer threads'.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerCpu {
    pub total: f64,
    pub writer: f64,
}

impl ServerCpu {
    /// Read from `/proc` for the processes `pids`.
    pub(crate) fn of(pids: &[u32]) -> ServerCpu {
        pids.iter()
            .map(|&p| ServerCpu {
                total: crate::serverproc::cpu_secs_of(p).unwrap_or(0.0),
                writer: [
                    crate::serverproc::WRITER_THREAD,
                    crate::serverproc::CHECKPOINT_THREAD,
                ]
                .iter()
                .map(|name| crate::serverproc::thread_cpu_secs(p, name))
                .sum(),
            })
            .fold(ServerCpu::default(), |a, b| ServerCpu {
                total: a.total + b.total,
                writer: a.writer + b.writer,
            })
    }
}

impl Measured {
    /// `cpu_secs` of the window per delivered message, µs.
    pub(crate) fn us_per_msg(&self, cpu_secs: f64) -> f64 {
        cpu_secs * 1e6 / (self.delivered as f64).max(1.0)
    }
}

impl Ring {
    /// Logs `args.clients` clients in, spread over `servers`.
    pub(crate) async fn login(
        args: &Args,
        servers: &[std::net::SocketAddr],
        cert: &rustls::pki_types::CertificateDer<'static>,
    ) -> anyhow::Result<Ring> {
        let endpoints = raw::endpoints(cert, args.endpoints)?;
        let n = args.clients.max(2);
        let permits = Arc::new(Semaphore::new(0));
        let sink = Arc::new(Counter {
            permits: Some(permits.clone()),
            ..Counter::default()
        });
        let bar = ui::bar(n as u64, "logging in");
        let (clients, _) = raw::login_many_to(
            &endpoints,
            servers,
            |i| format!("tp{i}"),
            0..n,
            256,
            sink.clone(),
            &bar,
        )
        .await?;
        bar.finish();
        Ok(Ring {
            clients: Arc::new(clients),
            sink,
            permits,
        })
    }

    /// Closed loop end to end (`args.window` in flight per client) for `args.secs`
    /// after a 2 s warm-up; `server_cpu` reads the servers' CPU seconds.
    pub(crate) async fn closed_loop(
        &self,
        args: &Args,
        label: &str,
        server_cpu: &dyn Fn() -> ServerCpu,
    ) -> Measured {
        let n = self.clients.len();
        let (sink, permits) = (&self.sink, &self.permits);
        let stop = Arc::new(AtomicBool::new(false));
        let mut drivers = vec![];
        for i in 0..n {
            let (clients, permits, stop) = (self.clients.clone(), permits.clone(), stop.clone());
            drivers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(p) = permits.acquire().await else {
                        return;
                    };
                    p.forget();
                    clients[i].send(&peer(i, n), raw::timed_body());
                }
            }));
        }
        permits.add_permits(n * args.window);
        let bar = ui::spinner(&format!("capacity, {label} (closed loop)"));
        tokio::time::sleep(Duration::from_secs(2)).await; // warm-up
        let (d0, t0) = (sink.delivered.load(Ordering::Relaxed), Instant::now());
        let r0 = sink.refused.load(Ordering::Relaxed);
        let (s0, p0) = (server_cpu(), crate::serverproc::cpu_secs_named("postgres"));
        let own_cpu = || crate::serverproc::cpu_secs_of(std::process::id()).unwrap_or(0.0);
        let c0 = own_cpu();
        ui::tick_for(&bar, Duration::from_secs(args.secs)).await;
        let delivered = sink.delivered.load(Ordering::Relaxed) - d0;
        let s1 = server_cpu();
        let per_sec = delivered as f64 / t0.elapsed().as_secs_f64();
        let measured = Measured {
            per_sec,
            delivered,
            refused: sink.refused.load(Ordering::Relaxed) - r0,
            server_cpu: s1.total - s0.total,
            server_writer_cpu: s1.writer - s0.writer,
            postgres_cpu: crate::serverproc::cpu_secs_named("postgres") - p0,
            client_cpu: own_cpu() - c0,
        };
        stop.store(true, Ordering::Relaxed);
        // A closed semaphore ends the drivers; a fresh one for the next phase.
        permits.close();
        for d in drivers {
            let _ = d.await;
        }
        ui::done(&bar, format!("capacity, {label}: {per_sec:.0} msg/s"));
        tokio::time::sleep(Duration::from_secs(3)).await; // drain
        measured
    }

    /// Open-loop latency at `pct` % of `capacity` (see [`load_phase`]); `servers`: the
    /// server processes whose cost the phase reports.
    pub(crate) async fn load(
        &self,
        capacity: f64,
        pct: u32,
        secs: u64,
        servers: &[u32],
    ) -> LoadPoint {
        load_phase(
            &self.clients,
            &self.sink,
            self.clients.len(),
            capacity,
            pct,
            secs,
            servers,
        )
        .await
    }

    /// Closes every client.
    pub(crate) fn close(&self) {
        for c in self.clients.iter() {
            c.close();
        }
    }
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let n = args.clients.max(2);
    let full = measure_capacity(None, args, &[], "durability full").await?;
    let capacity = full.measured.per_sec;

    // Latency at fractions of capacity, open loop.
    let loads = full.load_phases(args, &args.loads).await;
    for c in full.clients.iter() {
        c.close();
    }
    let (server_rss, refused_in_capacity) = (full.rss, full.measured.refused);
    let server_us_per_msg = full.measured.us_per_msg(full.measured.server_cpu);
    let server_writer_us_per_msg = full.measured.us_per_msg(full.measured.server_writer_cpu);
    let client_us_per_msg = full.measured.us_per_msg(full.measured.client_cpu);
    drop(full); // the server goes before the next one starts
    // The same with `--durability normal` (commits reach the OS, fsync at checkpoints):
    // what the fsync per group commit costs.
    let normal =
        measure_capacity(None, args, &["--durability", "normal"], "durability normal").await?;
    for c in normal.clients.iter() {
        c.close();
    }
    let capacity_normal = normal.measured.per_sec;
    drop(normal);

    let echo = echo_ceiling(n, args.endpoints.max(1), args.window, args.secs, false).await?;
    let durable = echo_ceiling(n, args.endpoints.max(1), args.window, args.secs, true).await?;
    let baseline = match &args.baseline {
        Some(bin) => {
            let c =
                capacity_and_half_load(Some(bin), args, &[], "baseline build", &args.loads).await?;
            Some(Baseline {
                bin: bin.display().to_string(),
                capacity_per_sec: c.per_sec,
                server_us_per_msg: c.server_us_per_msg,
                server_writer_us_per_msg: c.server_writer_us_per_msg,
                half_load: c.half_load,
                loads: c.loads,
            })
        }
        None => None,
    };
    Ok(Report {
        clients: n,
        capacity_per_sec: capacity,
        capacity_normal_per_sec: capacity_normal,
        echo_per_sec: echo.per_sec,
        ratio: capacity / echo.per_sec,
        durable_echo_per_sec: durable.per_sec,
        durable_ratio: capacity / durable.per_sec,
        echo_server_us_per_rt: echo.server_us_per_rt,
        durable_echo_server_us_per_rt: durable.server_us_per_rt,
        server_us_per_msg,
        server_writer_us_per_msg,
        client_us_per_msg,
        baseline,
        server_rss,
        refused_in_capacity,
        loads,
    })
}

/// Open-loop sends at `pct` % of `capacity` for `secs`: send-to-receive latency.
async fn load_phase(
    clients: &[RawClient],
    sink: &Counter,
    n: usize,
    capacity: f64,
    pct: u32,
    secs: u64,
    servers: &[u32],
) -> LoadPoint {
    let rate = capacity * pct as f64 / 100.0;
    let bar = ui::spinner(&format!("{pct}% load ({rate:.0} msg/s)"));
    sink.samples.lock().expect("lock").clear();
    sink.record.store(true, Ordering::Relaxed);
    let d0 = sink.delivered.load(Ordering::Relaxed);
    let r0 = sink.refused.load(Ordering::Relaxed);
    let machine = crate::machine::Sample::now(servers);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let phase = Duration::from_secs(secs);
    while started.elapsed() < phase {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            let i = (sent as usize) % n;
            clients[i].send(&peer(i, n), raw::timed_body());
            sent += 1;
        }
        bar.tick();
    }
    // The cost is of the sending window (what the messages sent in it cost), not of
    // the drain after it.
    let cost = machine.until(&crate::machine::Sample::now(servers), sent);
    tokio::time::sleep(Duration::from_secs(3)).await;
    sink.record.store(false, Ordering::Relaxed);
    let received = sink.delivered.load(Ordering::Relaxed) - d0;
    let latency = Latency::of(std::mem::take(&mut *sink.samples.lock().expect("lock")));
    ui::done(
        &bar,
        format!(
            "{pct}%: p50 {:.1} ms, p99 {:.1} ms",
            latency.p50_ms, latency.p99_ms
        ),
    );
    LoadPoint {
        pct,
        offered_per_sec: rate,
        sent,
        received,
        refused: sink.refused.load(Ordering::Relaxed) - r0,
        latency,
        cost,
    }
}

/// What an echo ceiling measured.
struct Echo {
    /// Round trips per second.
    per_sec: f64,
    /// The echo server's CPU per round trip, µs.
    server_us_per_rt: f64,
}

/// Echoes/s over `n` connections to a datagram echo endpoint, `window` in flight each,
/// and the endpoint's CPU per echo; `durable`: the endpoint commits each datagram before
/// echoing it.
async fn echo_ceiling(
    n: usize,
    endpoints: usize,
    window: usize,
    secs: u64,
    durable: bool,
) -> anyhow::Result<Echo> {
    let what = if durable { "durable echo" } else { "echo" };
    let echo = EchoProc::start(durable)?;
    let (addr, cert) = (echo.addr, echo.cert.clone());
    let clients = raw::endpoints(&cert, endpoints)?;
    let bar = ui::bar(n as u64, &format!("{what}: connecting"));
    let mut conns = vec![];
    for i in 0..n {
        conns.push(
            clients[i % clients.len()]
                .connect(addr, "localhost")?
                .await?,
        );
        bar.inc(1);
    }
    bar.finish();
    let echoed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let payload = Bytes::from(vec![7u8; 64]);
    let mut tasks = vec![];
    for c in conns.clone() {
        let (echoed, stop, payload) = (echoed.clone(), stop.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..window {
                let _ = c.send_datagram(payload.clone());
            }
            while !stop.load(Ordering::Relaxed) {
                // A dropped datagram would shrink the window: refill after 100 ms.
                match tokio::time::timeout(Duration::from_millis(100), c.read_datagram()).await {
                    Ok(Ok(_)) => {
                        echoed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Err(_)) => return,
                    Err(_) => {}
                }
                let _ = c.send_datagram(payload.clone());
            }
        }));
    }
    let bar = ui::spinner(&format!("{what} ceiling (closed loop)"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server_cpu = || crate::serverproc::cpu_secs_of(echo.pid()).unwrap_or(0.0);
    let (e0, t0, c0) = (echoed.load(Ordering::Relaxed), Instant::now(), server_cpu());
    ui::tick_for(&bar, Duration::from_secs(secs)).await;
    let echoes = echoed.load(Ordering::Relaxed) - e0;
    let rate = echoes as f64 / t0.elapsed().as_secs_f64();
    let server_us_per_rt = (server_cpu() - c0) * 1e6 / (echoes as f64).max(1.0);
    stop.store(true, Ordering::Relaxed);
    ui::done(&bar, format!("{what} ceiling {rate:.0}/s"));
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(Echo {
        per_sec: rate,
        server_us_per_rt,
    })
}
