//! A TCP impairment relay, the sibling of the UDP one: for the transports that run
//! over TCP (TLS over TCP, WebSocket). Per direction it adds a fixed delay to every
//! chunk (order kept), holds everything during scheduled **stalls** (a middlebox
//! that stops forwarding), and **cuts** every connection at scheduled times or on
//! demand (a reset, as when a NAT or proxy drops the flow). Random loss on TCP is not
//! made here — TCP would repair it invisibly below the application; real loss is made
//! with nftables in a network namespace (docs/bench/README.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, sleep_until};

/// What the TCP relay does.
#[derive(Debug, Clone)]
pub struct TcpRelayConfig {
    /// Where clients connect.
    pub listen: SocketAddr,
    /// The server.
    pub upstream: SocketAddr,
    /// Added to every chunk, each way.
    pub delay: Duration,
    /// (start, length) after the relay started: nothing is forwarded in these windows.
    pub stalls: Vec<(Duration, Duration)>,
    /// After the relay started: every connection open then is reset.
    pub cuts: Vec<Duration>,
}

impl TcpRelayConfig {
    /// A transparent relay from `listen` to `upstream`.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        TcpRelayConfig {
            listen,
            upstream,
            delay: Duration::ZERO,
            stalls: vec![],
            cuts: vec![],
        }
    }
}

/// A running TCP relay.
pub struct TcpRelayHandle {
    local_addr: SocketAddr,
    cut: broadcast::Sender<()>,
    stop: watch::Sender<bool>,
}

impl TcpRelayHandle {
    /// Where clients should connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Resets every connection open now.
    pub fn cut_now(&self) {
        let _ = self.cut.send(());
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        self.cut_now();
    }
}

impl Drop for TcpRelayHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a TCP relay.
pub async fn start_tcp(config: TcpRelayConfig) -> std::io::Result<TcpRelayHandle> {
    let listener = TcpListener::bind(config.listen).await?;
    let local_addr = listener.local_addr()?;
    let (cut, _) = broadcast::channel(16);
    let (stop, mut stop_rx) = watch::channel(false);
    let started = Instant::now();
    let config = Arc::new(config);
    for at in config.cuts.clone() {
        let (cut, mut stop_rx) = (cut.clone(), stop_rx.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = sleep_until(started + at) => { let _ = cut.send(()); }
                _ = stop_rx.changed() => {}
            }
        });
    }
    let cut_tx = cut.clone();
    tokio::spawn(async move {
        loop {
            let (client, _) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => continue,
                },
                _ = stop_rx.changed() => break,
            };
            let (config, cut_rx) = (config.clone(), cut_tx.subscribe());
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(config.upstream).await {
                    relay(client, server, config, started, cut_rx).await;
                }
            });
        }
    });
    Ok(TcpRelayHandle {
        local_addr,
        cut,
        stop,
    })
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    config: Arc<TcpRelayConfig>,
    started: Instant,
    mut cut: broadcast::Receiver<()>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    // A cut is a reset, not a clean close.
    let _ = client.set_zero_linger();
    let _ = server.set_zero_linger();
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, config.clone(), started);
    let down = pump(sr, cw, config, started);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = cut.recv() => {}
    }
}

/// Copies one direction with the delay and the stalls.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    config: Arc<TcpRelayConfig>,
    started: Instant,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut at = Instant::now() + config.delay;
        // Held until every stall it falls into has ended.
        for &(start, len) in &config.stalls {
            let (s, e) = (started + start, started + start + len);
            if at >= s && at < e {
                at = e;
            }
        }
        sleep_until(at).await;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
