//! Group fan-out: what one group message costs the server at 10, 100, 1,000 and
//! 10,000 members with write diffusion, and at 1,000 to 100,000 members as a large group
//! (read diffusion: one log entry per message), against a 1:1 message in the same run.
//!
//! Groups are created through the HTTP API (as a business backend would). One raw
//! client, a member, sends into each group:
//!
//! * **write cost, members offline**: messages one at a time (send, wait for the
//!   `SendResult`), so each sample is the commit of one message and its N timeline
//!   entries (write diffusion); then a pipelined burst for the sustained rate; and the
//!   database growth per message.
//! * **delivery, members online** (sizes up to `--online-max`): every member is a raw
//!   session that acknowledges pushes; measured from each send to the last member's
//!   first receipt of it.
//!
//! Writes `--out` (markdown, with the exact command and the machine) and prints JSON.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tern_protocol::pb;
use tokio::sync::mpsc;

use crate::raw::{self, RawClient, Sink};
use crate::serverproc::ServerProc;
use crate::stats::Latency;
use crate::suite::Meta;
use crate::ui;

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Group sizes (members, sender included), write diffusion.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000,10000")]
    pub sizes: Vec<usize>,
    /// Large-group sizes (read diffusion).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub large_sizes: Vec<usize>,
    /// Messages sent one at a time per size.
    #[arg(long, default_value_t = 30)]
    pub sequential: usize,
    /// Messages in the pipelined burst per size (divided by size/100 above 100 members).
    #[arg(long, default_value_t = 300)]
    pub burst: usize,
    /// Largest group measured with every member online.
    #[arg(long, default_value_t = 1000)]
    pub online_max: usize,
    /// Tiny sizes: proves the program runs, measures nothing.
    #[arg(long)]
    pub quick: bool,
    /// Markdown report to write.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Run the server on this PostgreSQL store (`--store`) instead of SQLite.
    #[arg(long)]
    pub store: Option<String>,
}

/// One group size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Row {
    /// Members (2 = the 1:1 baseline).
    pub members: usize,
    /// A large group (read diffusion).
    #[serde(default)]
    pub large: bool,
    /// Send -> SendResult, one message at a time, members offline.
    pub commit: Latency,
    /// Pipelined: messages per second.
    pub burst_msgs_per_sec: f64,
    /// Pipelined: timeline entries written per second.
    pub burst_entries_per_sec: f64,
    /// Send -> last online member has it (when measured).
    pub online_last_delivery: Option<Latency>,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Provenance.
    pub meta: Meta,
    /// Per size, the 1:1 baseline first.
    pub rows: Vec<Row>,
}

/// Forwards send results and message arrivals to channels.
struct Events {
    results: mpsc::UnboundedSender<pb::SendResult>,
    arrivals: mpsc::UnboundedSender<(usize, u64)>,
}

impl Sink for Events {
    fn on_send_result(&self, _client: usize, r: &pb::SendResult) {
        let _ = self.results.send(r.clone());
    }
    fn on_message(&self, client: usize, m: &pb::StoredMessage) {
        let _ = self.arrivals.send((client, m.server_msg_id));
    }
}

/// Creates a group of `members` through the HTTP API: the first
/// `MAX_MEMBERS_PER_REQUEST` in the create call, the rest added in chunks of that size
/// (the API's limit per request).
async fn create_group(
    http: &reqwest::Client,
    server: &ServerProc,
    members: Vec<String>,
    large: bool,
) -> anyhow::Result<String> {
    let per_request = tern_server::groups::MAX_MEMBERS_PER_REQUEST;
    let mut chunks = members.chunks(per_request);
    let first = chunks.next().unwrap_or_default();
    let resp: serde_json::Value = http
        .post(format!("http://{}/v1/groups", server.http))
        .bearer_auth(tern_server::config::DEV_API_KEY)
        .json(&serde_json::json!({ "name": "bench", "members": first, "large": large }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let group = resp["group"]
        .as_str()
        .map(str::to_owned)
        .context("no group id in the answer")?;
    for chunk in chunks {
        http.post(format!("http://{}/v1/groups/{group}/members", server.http))
            .bearer_auth(tern_server::config::DEV_API_KEY)
            .json(&serde_json::json!({ "members": chunk }))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(group)
}

async fn next_ok(rx: &mut mpsc::UnboundedReceiver<pb::SendResult>) -> anyhow::Result<()> {
    let r = tokio::time::timeout(Duration::from_secs(120), rx.recv())
        .await
        .context("no SendResult within 120 s")?
        .context("sender gone")?;
    anyhow::ensure!(
        r.code == pb::ErrorCode::Ok as i32,
        "send refused: {:?}",
        pb::ErrorCode::try_from(r.code)
    );
    Ok(())
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let started = Instant::now();
    let q = args.quick;
    let (sizes, large_sizes): (Vec<usize>, Vec<usize>) = if q {
        (vec![10, 100], vec![100])
    } else {
        (args.sizes.clone(), args.large_sizes.clone())
    };
    let max = sizes.iter().copied().max().unwrap_or(2).max(2).to_string();
    let max_large = large_sizes
        .iter()
        .copied()
        .max()
        .unwrap_or(2)
        .max(2)
        .to_string();
    let mut flags = vec![
        "--max-group-members",
        &max,
        "--max-large-group-members",
        &max_large,
    ];
    if let Some(url) = &args.store {
        flags.extend(["--store", url.as_str()]);
    }
    let server = ServerProc::start(&flags)?;
    let endpoints = raw::endpoints(&server.cert, 4)?;
    let http = reqwest::Client::new();
    let mut rows = vec![];
    let runs = std::iter::once((2, false))
        .chain(sizes.into_iter().map(|n| (n, false)))
        .chain(large_sizes.into_iter().map(|n| (n, true)));
    for (run, (members, large)) in runs.enumerate() {
        let (res_tx, mut results) = mpsc::unbounded_channel();
        let (arr_tx, _arrivals) = mpsc::unbounded_channel();
        let sink = Arc::new(Events {
            results: res_tx,
            arrivals: arr_tx,
        });
        let sender_name = format!("s{run}");
        let sender =
            RawClient::login(&endpoints[0], server.addr, &sender_name, 0, sink.clone()).await?;
        let (kind, to) = if members == 2 {
            (pb::ConversationKind::Direct, format!("peer{run}"))
        } else {
            let names = (1..members).map(|i| format!("m{run}_{i}")).collect();
            let mut all = vec![sender_name.clone()];
            all.extend::<Vec<String>>(names);
            (
                pb::ConversationKind::Group,
                create_group(&http, &server, all, large).await?,
            )
        };
        // Write cost, members offline.
        let sequential = if q { 5 } else { args.sequential };
        let bar = ui::bar(
            sequential as u64,
            &format!("{members} members: one at a time"),
        );
        let mut samples = Vec::with_capacity(sequential);
        for _ in 0..sequential {
            let t = Instant::now();
            sender.send_to(kind, &to, vec![b'x'; 20]);
            next_ok(&mut results).await?;
            samples.push(t.elapsed());
            bar.inc(1);
        }
        let commit = Latency::of(samples);
        ui::done(
            &bar,
            format!("{members} members: p50 {:.1} ms", commit.p50_ms),
        );
        let burst = if q {
            10
        } else {
            (args.burst * 100 / members.max(100)).max(10)
        };
        let t = Instant::now();
        for _ in 0..burst {
            sender.send_to(kind, &to, vec![b'x'; 20]);
        }
        for _ in 0..burst {
            next_ok(&mut results).await?;
        }
        let secs = t.elapsed().as_secs_f64();
        sender.close();
        let online_last_delivery =
            if members <= args.online_max.max(if q { 10 } else { 0 }) && members > 2 {
                Some(online(&server, &endpoints, &http, members, run, q, large).await?)
            } else {
                None
            };
        rows.push(Row {
            members,
            large,
            commit,
            burst_msgs_per_sec: burst as f64 / secs,
            burst_entries_per_sec: (burst * members) as f64 / secs,
            online_last_delivery,
        });
    }
    let report = Report {
        meta: Meta::now(q, started),
        rows,
    };
    if let Some(out) = &args.out {
        std::fs::write(out, markdown(&report))
            .with_context(|| format!("write {}", out.display()))?;
        ui::say(format!("wrote {}", out.display()));
    }
    Ok(report)
}

/// Every member online: time from each send to the last member's receipt.
async fn online(
    server: &ServerProc,
    endpoints: &[quinn::Endpoint],
    http: &reqwest::Client,
    members: usize,
    run: usize,
    q: bool,
    large: bool,
) -> anyhow::Result<Latency> {
    let (res_tx, mut results) = mpsc::unbounded_channel();
    let (arr_tx, mut arrivals) = mpsc::unbounded_channel();
    let sink = Arc::new(Events {
        results: res_tx,
        arrivals: arr_tx,
    });
    let bar = ui::bar(
        members as u64,
        &format!("{members} members online: logging in"),
    );
    let (clients, _) = raw::login_many(
        endpoints,
        server.addr,
        |i| format!("o{run}_{i}"),
        0..members,
        128,
        sink.clone(),
        &bar,
    )
    .await?;
    ui::done(&bar, format!("{members} online"));
    let group = create_group(
        http,
        server,
        (0..members).map(|i| format!("o{run}_{i}")).collect(),
        large,
    )
    .await?;
    // The group-created event reaches everyone first; drain it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while arrivals.try_recv().is_ok() {}
    let messages = if q { 3 } else { 20 };
    let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let mut samples = vec![];
    let bar = ui::bar(
        messages as u64,
        &format!("{members} members online: messages"),
    );
    for _ in 0..messages {
        let t = Instant::now();
        clients[0].send_to(pb::ConversationKind::Group, &group, vec![b'x'; 20]);
        let r = tokio::time::timeout(Duration::from_secs(120), results.recv())
            .await
            .context("no SendResult")?
            .context("sender gone")?;
        sent_at.lock().unwrap().insert(r.server_msg_id, t);
        // Everyone but the sender must see it.
        let mut have = 0;
        while have < members - 1 {
            let (_, id) = tokio::time::timeout(Duration::from_secs(120), arrivals.recv())
                .await
                .context("a member never got the message")?
                .context("arrivals closed")?;
            if id == r.server_msg_id {
                have += 1;
            }
        }
        samples.push(t.elapsed());
        bar.inc(1);
    }
    let l = Latency::of(samples);
    ui::done(
        &bar,
        format!("{members} online: last delivery p50 {:.1} ms", l.p50_ms),
    );
    for c in &clients {
        c.close();
    }
    Ok(l)
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    s.push_str("# Group fan-out: write diffusion and large groups (read diffusion)\n\n");
    s.push_str("Generated by `tern-bench fanout`; analysis in [analysis.md](analysis.md#group-fan-out).\n\n");
    s.push_str(&format!(
        "- command: `{}`\n- machine: {}\n- date: {}, commit {}\n- quick: {}\n- wall time: {:.0} s\n\n",
        r.meta.command, r.meta.machine, r.meta.date, r.meta.commit, r.meta.quick, r.meta.secs
    ));
    s.push_str("Members offline: one message at a time (commit of the message and its N timeline entries, send to SendResult), then a pipelined burst. Members online: send to the last member's first receipt. The first row is a 1:1 message in the same run (baseline). Rows marked large are large groups (read diffusion): one log entry per message whatever the size; their entries/s column counts members reached, not rows written.\n\n");
    s.push_str("| members | commit p50 ms | commit p99 ms | burst msg/s | burst entries/s | online: last delivery p50 ms | p99 ms |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    for row in &r.rows {
        let (p50, p99) = row
            .online_last_delivery
            .as_ref()
            .map_or(("–".into(), "–".into()), |l| {
                (format!("{:.1}", l.p50_ms), format!("{:.1}", l.p99_ms))
            });
        s.push_str(&format!(
            "| {}{} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} |\n",
            row.members,
            if row.members == 2 {
                " (1:1)"
            } else if row.large {
                " large"
            } else {
                ""
            },
            row.commit.p50_ms,
            row.commit.p99_ms,
            row.burst_msgs_per_sec,
            row.burst_entries_per_sec,
            p50,
            p99
        ));
    }
    s
}
