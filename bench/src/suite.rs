//! The whole suite in one invocation (`tern-bench all`), so every baseline runs on the
//! machine in the same state as what it is compared with. `--quick` shrinks every
//! benchmark to a smoke test (CI runs it to prove the programs work; its numbers mean
//! nothing).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{catchup, idle, idle_cost, loss, throughput, ui, wire};

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Tiny sizes: proves the programs run, measures nothing.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/results.json")]
    pub out: PathBuf,
    /// An older `tern-server` binary for the throughput stage to measure right after
    /// this build, the same way (capacity, server CPU per message, p99 at 50 % load).
    #[arg(long)]
    pub baseline: Option<PathBuf>,
}

/// Where and how the suite ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// UTC date.
    pub date: String,
    /// The command line.
    pub command: String,
    /// Git commit, if known.
    pub commit: String,
    /// CPU count, memory, kernel.
    pub machine: String,
    /// Smoke sizes?
    pub quick: bool,
    /// Wall time of the suite, s.
    pub secs: f64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Results {
    /// Provenance.
    pub meta: Meta,
    /// 1.
    pub throughput: throughput::Report,
    /// 2.
    pub idle: idle::Report,
    /// 3.
    pub loss: loss::Report,
    /// 4.
    pub idle_cost: idle_cost::Report,
    /// 5.
    pub wire: wire::Report,
    /// 6.
    pub catchup: catchup::Report,
}

impl Meta {
    /// The provenance lines of a markdown report (command, machine, date and commit,
    /// quick, wall time).
    pub(crate) fn lines(&self) -> String {
        format!(
            "- command: `{}`\n- machine: {}\n- date: {}, commit {}\n- quick: {}\n- wall time: {:.0} s\n",
            self.command, self.machine, self.date, self.commit, self.quick, self.secs
        )
    }

    /// This machine and command, for a run that started at `started`.
    pub(crate) fn now(quick: bool, started: std::time::Instant) -> Meta {
        Meta {
            date: sh("date -u +%Y-%m-%d"),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            commit: sh("git rev-parse --short HEAD"),
            machine: format!(
                "{} cores, {} GiB, {}",
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                sh("free -g | awk '/Mem:/{print $2}'"),
                sh("uname -sr"),
            ),
            quick,
            secs: started.elapsed().as_secs_f64(),
        }
    }
}

fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Runs all six benchmarks and writes the results.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Results> {
    let q = args.quick;
    let started = std::time::Instant::now();
    ui::say("== 1/6 throughput");
    let throughput = throughput::run(&throughput::Args {
        clients: if q { 50 } else { 1000 },
        endpoints: if q { 2 } else { 8 },
        window: 2,
        secs: if q { 2 } else { 10 },
        loads: vec![25, 50, 90],
        baseline: args.baseline.clone(),
    })
    .await?;
    ui::say("== 2/6 idle sessions");
    let idle = idle::run(&idle::Args {
        sessions: if q {
            vec![200, 400]
        } else {
            vec![10_000, 50_000]
        },
        endpoints: if q { 2 } else { 32 },
        concurrency: 256,
    })
    .await?;
    ui::say("== 3/6 delivery under loss");
    let loss = loss::run(&loss::Args {
        messages: if q { 10 } else { 500 },
        rate: if q { 20.0 } else { 10.0 },
        loss: if q { vec![0, 30] } else { vec![0, 10, 30, 50] },
        rtt: if q { vec![100] } else { vec![100, 300] },
        burst: 1,
        seed: 7,
        deadline: if q { 30 } else { 60 },
        profiles: vec!["datagram".into(), "stream".into(), "mobileimsdk".into()],
    })
    .await?;
    ui::say("== 4/6 idle cost");
    let idle_cost = idle_cost::run(&idle_cost::Args {
        compress: 10.0,
        secs: if q { Some(10.0) } else { None },
    })
    .await?;
    ui::say("== 5/6 bytes on the wire");
    let wire = wire::run(&wire::Args {
        single: if q { 10 } else { 200 },
        burst: if q { 50 } else { 2000 },
    })
    .await?;
    ui::say("== 6/6 offline catch-up");
    let catchup = catchup::run(&catchup::Args {
        messages: if q { 2_000 } else { 100_000 },
        conversations: if q { 20 } else { 500 },
    })
    .await?;
    let meta = Meta::now(q, started);
    let results = Results {
        meta,
        throughput,
        idle,
        loss,
        idle_cost,
        wire,
        catchup,
    };
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)?;
    ui::say(format!("results written to {}", args.out.display()));
    Ok(results)
}
