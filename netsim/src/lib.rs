//! # tern-netsim: a UDP impairment relay
//!
//! `tc netem` is not available on the machines Tern is developed and tested on, so weak
//! networks are made here: the relay sits between clients and a server on loopback and
//! applies, per direction, random loss, delay, jitter, reordering, duplication, a
//! bandwidth limit and scheduled blackouts — the same [`Link`] model the deterministic
//! simulator in `tern-protocol` uses, now applied to real packets in real time.
//!
//! It also emulates a **NAT**: each client address gets its own upstream socket (a
//! "mapping"); after `nat_timeout` without an outbound packet the mapping is dropped, and
//! the client's next packet gets a new socket, so the server sees the client's address
//! change (QUIC migrates; the heartbeat reply reveals it) and packets the server sent to
//! the old mapping are lost — exactly what a carrier NAT does to an idle phone.
//!
//! Use it in-process ([`start`]) in tests, or as the `tern-netsim` binary. Its sibling
//! [`tcp`] impairs TCP (delay, stalls, cuts) for the TLS-over-TCP and WebSocket
//! transports; blocking UDP entirely is a blackout (or `loss = 1.0`) here.

pub mod tcp;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_protocol::sim::{Link, LinkConfig, LinkStats};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

/// What the relay does.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Where clients send to.
    pub listen: SocketAddr,
    /// The server.
    pub upstream: SocketAddr,
    /// Client -> server impairments.
    pub up: LinkConfig,
    /// Server -> client impairments.
    pub down: LinkConfig,
    /// Drop a mapping after this long without an outbound packet (`None`: never).
    pub nat_timeout: Option<Duration>,
    /// RNG seed (both directions derive from it).
    pub seed: u64,
    /// Keep a log of the first this many packets offered to the relay, both directions
    /// ([`RelayHandle::packets`]); 0: no log. Bounded, so a long run cannot grow it.
    pub log_packets: usize,
}

impl RelayConfig {
    /// A transparent relay (no impairment) from `listen` to `upstream`.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        let clean = LinkConfig {
            delay: Duration::ZERO,
            ..LinkConfig::default()
        };
        RelayConfig {
            listen,
            upstream,
            up: clean.clone(),
            down: clean,
            nat_timeout: None,
            seed: 1,
            log_packets: 0,
        }
    }
}

/// Which way a packet went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Client -> server.
    Up,
    /// Server -> client.
    Down,
}

/// One packet in the relay's log ([`RelayConfig::log_packets`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketRecord {
    /// When the relay received it.
    pub at: Instant,
    /// Which way.
    pub direction: Direction,
    /// UDP payload bytes.
    pub len: usize,
    /// Copies delivered: 0 lost (or dropped by a blackout), 2 duplicated.
    pub copies: usize,
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client -> server.
    pub up: LinkStats,
    /// Server -> client.
    pub down: LinkStats,
    /// Mappings created (the first per client, and one after each NAT expiry).
    pub mappings: u64,
    /// Mappings dropped by the NAT timeout.
    pub nat_expiries: u64,
}

impl std::fmt::Display for RelayStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, s) in [("up", self.up), ("down", self.down)] {
            writeln!(
                f,
                "{name:>4}: {} packets ({} bytes), lost {}, blacked out {}, duplicated {}, reordered {}",
                s.sent, s.bytes, s.lost, s.blacked_out, s.duplicated, s.reordered
            )?;
        }
        write!(
            f,
            " nat: {} mappings, {} expiries",
            self.mappings, self.nat_expiries
        )
    }
}

struct Mapping {
    /// The client -> server lane of this mapping (from the mapping's own socket).
    up: Lane,
    last_out: Instant,
    generation: u64,
}

struct Shared {
    up: Mutex<Link>,
    down: Mutex<Link>,
    mappings: Mutex<HashMap<SocketAddr, Mapping>>,
    created: AtomicU64,
    expired: AtomicU64,
    /// The packet log and its bound.
    log: Mutex<Vec<PacketRecord>>,
    log_cap: usize,
}

impl Shared {
    /// Sends `data` one way through its link on `lane`: zero, one or two copies, each
    /// after its own delay; logs it while the log has room.
    fn forward(&self, direction: Direction, lane: &Lane, data: Vec<u8>) {
        let now = Instant::now();
        let link = match direction {
            Direction::Up => &self.up,
            Direction::Down => &self.down,
        };
        let arrivals = link.lock().expect("lock").transmit(now, data.len());
        if self.log_cap > 0 {
            let mut log = self.log.lock().expect("lock");
            if log.len() < self.log_cap {
                log.push(PacketRecord {
                    at: now,
                    direction,
                    len: data.len(),
                    copies: arrivals.len(),
                });
            }
        }
        for at in arrivals {
            let _ = lane.send((at, data.clone()));
        }
    }
}

/// A running relay.
pub struct RelayHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl RelayHandle {
    /// Where clients should send.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Counters so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            up: self.shared.up.lock().expect("lock").stats(),
            down: self.shared.down.lock().expect("lock").stats(),
            mappings: self.shared.created.load(Ordering::Relaxed),
            nat_expiries: self.shared.expired.load(Ordering::Relaxed),
        }
    }

    /// The packet log so far (empty unless [`RelayConfig::log_packets`] is set).
    pub fn packets(&self) -> Vec<PacketRecord> {
        self.shared.log.lock().expect("lock").clone()
    }

    /// Stops relaying (sockets close when their tasks end).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a relay on the current tokio runtime.
pub async fn start(config: RelayConfig) -> std::io::Result<RelayHandle> {
    let listen = Arc::new(UdpSocket::bind(config.listen).await?);
    let local_addr = listen.local_addr()?;
    let t0 = Instant::now();
    let shared = Arc::new(Shared {
        up: Mutex::new(Link::new(
            config.up.clone(),
            t0,
            config.seed.wrapping_add(1),
        )),
        down: Mutex::new(Link::new(
            config.down.clone(),
            t0,
            config.seed.wrapping_add(2),
        )),
        mappings: Mutex::new(HashMap::new()),
        created: AtomicU64::new(0),
        expired: AtomicU64::new(0),
        log: Mutex::new(Vec::new()),
        log_cap: config.log_packets,
    });
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(client_side(listen, config, shared.clone(), stop_rx));
    Ok(RelayHandle {
        local_addr,
        shared,
        stop,
    })
}

/// One direction of one mapping: packets leave in the order they are due, and packets
/// due at the same instant in the order they came, as on a real link. (A spawned task per
/// packet, as before, let the runtime run the tasks of one timer tick in any order, so a
/// relay with no impairment reordered bursts: the wire benchmark's pipelined phase then
/// measured the senders' reordering repairs, not Tern.) Reordering is the link model's
/// job (`reorder`, `jitter`), which sets the due times.
type Lane = mpsc::UnboundedSender<(Instant, Vec<u8>)>;

/// Starts the task of a lane from `socket` to `to`; it ends when the lane is dropped and
/// nothing is left to send.
fn lane(socket: Arc<UdpSocket>, to: SocketAddr) -> Lane {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    tokio::spawn(async move {
        // (due, arrival number): earliest first, ties in arrival order.
        let mut due: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
        let mut serial = 0u64;
        let mut open = true;
        loop {
            while let Some(Reverse((at, _, _))) = due.peek() {
                if *at > Instant::now() {
                    break;
                }
                let Some(Reverse((_, _, data))) = due.pop() else {
                    break;
                };
                let _ = socket.send_to(&data, to).await;
            }
            if !open && due.is_empty() {
                return;
            }
            let next = due.peek().map(|Reverse((at, _, _))| *at);
            tokio::select! {
                packet = rx.recv(), if open => match packet {
                    Some((at, data)) => {
                        serial += 1;
                        due.push(Reverse((at, serial, data)));
                    }
                    None => open = false,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next.unwrap_or_else(Instant::now))), if next.is_some() => {}
            }
        }
    });
    tx
}

async fn client_side(
    listen: Arc<UdpSocket>,
    config: RelayConfig,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = tokio::select! {
            r = listen.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "relay receive error");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let now = Instant::now();
        let socket = {
            let mut maps = shared.mappings.lock().expect("lock");
            let expired = match (maps.get(&client), config.nat_timeout) {
                (Some(m), Some(timeout)) => now.duration_since(m.last_out) >= timeout,
                _ => false,
            };
            if expired {
                maps.remove(&client);
                shared.expired.fetch_add(1, Ordering::Relaxed);
            }
            match maps.get_mut(&client) {
                Some(m) => {
                    m.last_out = now;
                    m.up.clone()
                }
                None => {
                    // A new mapping: a fresh socket, so the server sees a new source port.
                    let std_socket =
                        match std::net::UdpSocket::bind(SocketAddr::new(config.upstream.ip(), 0)) {
                            Ok(s) => s,
                            Err(e) => {
                                tracing::warn!(error = %e, "cannot open a mapping socket");
                                continue;
                            }
                        };
                    let _ = std_socket.set_nonblocking(true);
                    let Ok(socket) = UdpSocket::from_std(std_socket).map(Arc::new) else {
                        continue;
                    };
                    let generation = shared.created.fetch_add(1, Ordering::Relaxed);
                    let up = lane(socket.clone(), config.upstream);
                    maps.insert(
                        client,
                        Mapping {
                            up: up.clone(),
                            last_out: now,
                            generation,
                        },
                    );
                    let nat = config.nat_timeout;
                    tokio::spawn(server_side(
                        socket.clone(),
                        client,
                        generation,
                        nat,
                        listen.clone(),
                        shared.clone(),
                        stop.clone(),
                    ));
                    up
                }
            }
        };
        shared.forward(Direction::Up, &socket, buf[..n].to_vec());
    }
}

/// Relays the server's packets on one mapping back to its client, until the mapping is
/// replaced (NAT expiry) or the relay stops.
async fn server_side(
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    generation: u64,
    nat_timeout: Option<Duration>,
    listen: Arc<UdpSocket>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 65536];
    let down = lane(listen, client);
    loop {
        let n = tokio::select! {
            r = socket.recv(&mut buf) => match r { Ok(n) => n, Err(_) => continue },
            _ = stop.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => 0,
        };
        let (current, timed_out) = match shared.mappings.lock().expect("lock").get(&client) {
            Some(m) if m.generation == generation => {
                (true, nat_timeout.is_some_and(|t| m.last_out.elapsed() >= t))
            }
            _ => (false, true),
        };
        if !current {
            return; // replaced by a newer mapping: this port is gone
        }
        // A timed-out mapping drops inbound packets at once, as a NAT does; it is
        // replaced when the client sends again.
        if n > 0 && !timed_out {
            shared.forward(Direction::Down, &down, buf[..n].to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                // Echo the payload followed by the source address the server saw.
                let mut reply = buf[..n].to_vec();
                reply.extend_from_slice(format!("|{from}").as_bytes());
                let _ = s.send_to(&reply, from).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn relays_both_ways_and_a_nat_timeout_changes_the_source_port() {
        let server = echo_server().await;
        let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), server);
        cfg.nat_timeout = Some(Duration::from_millis(200));
        let relay = start(cfg).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 2048];
        let mut seen = vec![];
        for pause in [0, 50, 400] {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            client.send_to(b"ping", relay.local_addr()).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            let reply = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(reply.starts_with("ping|"));
            seen.push(reply);
        }
        assert_eq!(seen[0], seen[1], "same mapping within the timeout");
        assert_ne!(seen[1], seen[2], "a new source port after the NAT timeout");
        let stats = relay.stats();
        assert_eq!(
            (
                stats.mappings,
                stats.nat_expiries,
                stats.up.sent,
                stats.down.sent
            ),
            (2, 1, 3, 3)
        );
    }

    #[tokio::test]
    async fn the_packet_log_holds_each_packet_each_way_up_to_its_bound() {
        let server = echo_server().await;
        let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), server);
        cfg.log_packets = 5;
        let relay = start(cfg).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 2048];
        let mut replies = vec![];
        for i in 0..4usize {
            let ping = vec![b'x'; 10 + i];
            client.send_to(&ping, relay.local_addr()).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            replies.push(n);
        }
        let log = relay.packets();
        // Four pings and four echoes offered; the log keeps the first five.
        assert_eq!(log.len(), 5);
        let shape: Vec<_> = log.iter().map(|p| (p.direction, p.len, p.copies)).collect();
        assert_eq!(
            shape,
            vec![
                (Direction::Up, 10, 1),
                (Direction::Down, replies[0], 1),
                (Direction::Up, 11, 1),
                (Direction::Down, replies[1], 1),
                (Direction::Up, 12, 1),
            ]
        );
        assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
        // Off by default.
        let quiet = start(RelayConfig::new("127.0.0.1:0".parse().unwrap(), server))
            .await
            .unwrap();
        client.send_to(b"ping", quiet.local_addr()).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf)).await;
        assert!(quiet.packets().is_empty());
    }

    #[tokio::test]
    async fn loss_and_delay_apply() {
        let server = echo_server().await;
        let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), server);
        cfg.up = LinkConfig {
            loss: 0.5,
            delay: Duration::from_millis(30),
            ..LinkConfig::default()
        };
        let relay = start(cfg).await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let started = Instant::now();
        for _ in 0..200 {
            client.send_to(b"x", relay.local_addr()).await.unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), client.recv(&mut buf)).await
        {
            got += 1;
        }
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert!((60..140).contains(&got), "about half arrive: {got}");
        assert_eq!(relay.stats().up.lost, 200 - got as u64);
    }

    /// A link without reordering keeps a burst's order both ways, with no delay and with
    /// a fixed one (packets due in the same timer tick too).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_link_without_reordering_keeps_a_bursts_order() {
        for delay in [Duration::ZERO, Duration::from_millis(20)] {
            let server = echo_server().await;
            let mut cfg = RelayConfig::new("127.0.0.1:0".parse().unwrap(), server);
            cfg.up.delay = delay;
            cfg.down.delay = delay;
            let relay = start(cfg).await.unwrap();
            let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let burst = 300u32;
            for i in 0..burst {
                client
                    .send_to(&i.to_be_bytes(), relay.local_addr())
                    .await
                    .unwrap();
            }
            let mut buf = [0u8; 2048];
            let mut got = vec![];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), client.recv(&mut buf)).await
            {
                got.push(u32::from_be_bytes(buf[..4].try_into().unwrap()));
                assert!(n > 4);
            }
            // Loopback may drop a packet when a socket buffer is full, never reorder one.
            assert!(
                got.len() as u32 > burst / 3,
                "{delay:?}: {} of {burst}",
                got.len()
            );
            assert!(
                got.windows(2).all(|w| w[0] < w[1]),
                "{delay:?}: reordered: {got:?}"
            );
        }
    }
}
