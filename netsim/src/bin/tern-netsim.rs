//! `tern-netsim`: run the impairment relay between clients and a server.
//!
//! ```text
//! tern-netsim --listen 127.0.0.1:7444 --upstream 127.0.0.1:7443 \
//!     --loss 0.3 --delay 50ms --jitter 50ms --reorder 0.05 --duplicate 0.02 \
//!     --rate 125000 --blackout 10s@60s --nat-timeout 30s --seed 7
//! ```
//!
//! Every impairment takes one value for both directions or `UP/DOWN` (e.g.
//! `--loss 0.3/0.1`: 30 % client -> server, 10 % back). `--blackout LEN@START` (repeatable)
//! drops everything in both directions from START for LEN after the relay starts.
//! Counters are printed on exit (Ctrl-C / SIGTERM) and every `--report-every`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tern_netsim::{RelayConfig, start};
use tern_protocol::sim::LinkConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tern-netsim",
    version,
    about = "UDP impairment relay for weak-network tests"
)]
struct Cli {
    /// Address clients send to
    #[arg(long)]
    listen: SocketAddr,
    /// The server's address
    #[arg(long)]
    upstream: SocketAddr,
    /// Loss probability, e.g. 0.3 or 0.3/0.1
    #[arg(long, default_value = "0")]
    loss: String,
    /// One-way base delay, e.g. 50ms or 50ms/80ms
    #[arg(long, default_value = "0ms")]
    delay: String,
    /// Extra uniform delay in [0, jitter]
    #[arg(long, default_value = "0ms")]
    jitter: String,
    /// Probability a packet is held back by --reorder-delay
    #[arg(long, default_value = "0")]
    reorder: String,
    /// How long a reordered packet is held back
    #[arg(long, default_value = "30ms")]
    reorder_delay: String,
    /// Probability a packet is delivered twice
    #[arg(long, default_value = "0")]
    duplicate: String,
    /// Bandwidth in bytes per second (0 = unlimited)
    #[arg(long, default_value = "0")]
    rate: String,
    /// Blackout window LEN@START, e.g. 10s@30s (repeatable)
    #[arg(long)]
    blackout: Vec<String>,
    /// NAT mapping timeout (e.g. 30s); mappings never expire if absent
    #[arg(long)]
    nat_timeout: Option<String>,
    /// RNG seed
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print counters this often (e.g. 10s)
    #[arg(long)]
    report_every: Option<String>,
}

fn split(v: &str) -> (&str, &str) {
    v.split_once('/').unwrap_or((v, v))
}

fn dur(v: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(v).with_context(|| format!("not a duration: {v:?}"))
}

fn pair<T>(v: &str, parse: impl Fn(&str) -> anyhow::Result<T>) -> anyhow::Result<(T, T)> {
    let (a, b) = split(v);
    Ok((parse(a)?, parse(b)?))
}

fn prob(v: &str) -> anyhow::Result<f64> {
    let p: f64 = v
        .parse()
        .with_context(|| format!("not a probability: {v:?}"))?;
    if !(0.0..=1.0).contains(&p) {
        bail!("probability {p} is not within 0..=1");
    }
    Ok(p)
}

fn links(cli: &Cli) -> anyhow::Result<(LinkConfig, LinkConfig)> {
    let loss = pair(&cli.loss, prob)?;
    let delay = pair(&cli.delay, dur)?;
    let jitter = pair(&cli.jitter, dur)?;
    let reorder = pair(&cli.reorder, prob)?;
    let reorder_delay = pair(&cli.reorder_delay, dur)?;
    let duplicate = pair(&cli.duplicate, prob)?;
    let rate = pair(&cli.rate, |v| {
        v.parse::<u64>()
            .with_context(|| format!("not a rate: {v:?}"))
    })?;
    let mut blackouts = vec![];
    for b in &cli.blackout {
        let (len, at) = b
            .split_once('@')
            .with_context(|| format!("blackout must be LEN@START, got {b:?}"))?;
        blackouts.push((dur(at)?, dur(len)?));
    }
    let make = |up: bool| {
        let pick = |p: (f64, f64)| if up { p.0 } else { p.1 };
        let pickd = |p: (Duration, Duration)| if up { p.0 } else { p.1 };
        let r = if up { rate.0 } else { rate.1 };
        LinkConfig {
            loss: pick(loss),
            delay: pickd(delay),
            jitter: pickd(jitter),
            reorder: pick(reorder),
            reorder_delay: pickd(reorder_delay),
            duplicate: pick(duplicate),
            blackouts: blackouts.clone(),
            rate: (r > 0).then_some(r),
        }
    };
    Ok((make(true), make(false)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let (up, down) = links(&cli)?;
    let config = RelayConfig {
        listen: cli.listen,
        upstream: cli.upstream,
        up,
        down,
        nat_timeout: cli.nat_timeout.as_deref().map(dur).transpose()?,
        seed: cli.seed,
        log_packets: 0,
    };
    let relay = start(config.clone())
        .await
        .with_context(|| format!("bind {}", cli.listen))?;
    println!("relaying {} -> {}", relay.local_addr(), config.upstream);
    println!("up: {:?}", config.up);
    println!("down: {:?}", config.down);
    let every = cli.report_every.as_deref().map(dur).transpose()?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let tick = async {
            match every {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick => println!("{}", relay.stats()),
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    println!("{}", relay.stats());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_direction_values_parse() {
        let cli = Cli::parse_from([
            "tern-netsim",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--loss",
            "0.3/0.1",
            "--delay",
            "50ms",
            "--rate",
            "1000/0",
            "--blackout",
            "10s@30s",
        ]);
        let (up, down) = links(&cli).unwrap();
        assert_eq!((up.loss, down.loss), (0.3, 0.1));
        assert_eq!(
            (up.delay, down.delay),
            (Duration::from_millis(50), Duration::from_millis(50))
        );
        assert_eq!((up.rate, down.rate), (Some(1000), None));
        assert_eq!(
            up.blackouts,
            vec![(Duration::from_secs(30), Duration::from_secs(10))]
        );
        let bad = Cli::parse_from([
            "tern-netsim",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "127.0.0.1:2",
            "--loss",
            "1.5",
        ]);
        assert!(links(&bad).is_err());
    }
}
