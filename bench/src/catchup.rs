//! Benchmark 6: offline catch-up — a client returning to a large backlog.
//!
//! `--conversations` raw senders store `--messages` messages in total for one user who
//! is offline. Then a fresh `tern-client` (empty database, as after a reinstall) logs
//! in as that user. Measured from the `login` call: the time until its conversation
//! list shows every conversation (summaries applied), and the time until the whole
//! timeline is in its SQLite (catch-up progress reaches the server's head).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tern_client::{Client, ClientConfig};
use tern_protocol::pb;

use crate::app::{Seen, until};
use crate::raw::{self, Sink};
use crate::serverproc::ServerProc;
use crate::ui;

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Messages waiting for the user.
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Conversations they are spread over (one sender each).
    #[arg(long, default_value_t = 500)]
    pub conversations: usize,
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Messages stored.
    pub messages: usize,
    /// Conversations.
    pub conversations: usize,
    /// Seconds the senders took to store them (for reference).
    pub fill_secs: f64,
    /// Seconds from login to every conversation listed.
    pub summaries_secs: f64,
    /// Seconds from login to the whole backlog stored locally.
    pub all_stored_secs: f64,
    /// Messages in the local database at the end.
    pub stored_locally: u64,
}

#[derive(Default)]
struct Acks {
    ok: AtomicU64,
    refused: AtomicU64,
}

impl Sink for Acks {
    fn on_send_result(&self, _client: usize, r: &pb::SendResult) {
        if r.code == pb::ErrorCode::Ok as i32 {
            self.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let server = ServerProc::start(&[])?;
    let endpoints = raw::endpoints(&server.cert, 4)?;
    let acks = Arc::new(Acks::default());
    let convs = args.conversations.max(1);
    let bar = ui::bar(convs as u64, "senders logging in");
    let (senders, _) = raw::login_many(
        &endpoints,
        server.addr,
        |i| format!("friend{i}"),
        0..convs,
        128,
        acks.clone(),
        &bar,
    )
    .await?;
    bar.finish();

    let bar = ui::bar(args.messages as u64, "storing the backlog");
    let started = Instant::now();
    let total = args.messages as u64;
    let mut queued = 0u64;
    // Keep a bounded number of sends outstanding so the fill measures the store, not a
    // queue of a hundred thousand frames.
    while acks.ok.load(Ordering::Relaxed) + acks.refused.load(Ordering::Relaxed) < total {
        let done = acks.ok.load(Ordering::Relaxed) + acks.refused.load(Ordering::Relaxed);
        while queued < total && queued - done < 4096 {
            let i = queued as usize % convs;
            senders[i].send("reader", format!("backlog {queued}").into_bytes());
            queued += 1;
        }
        bar.set_position(done);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fill_secs = started.elapsed().as_secs_f64();
    bar.finish();
    anyhow::ensure!(
        acks.refused.load(Ordering::Relaxed) == 0,
        "{} sends refused while filling",
        acks.refused.load(Ordering::Relaxed)
    );
    for s in &senders {
        s.close();
    }

    let dir = tempfile::tempdir()?;
    let mut config = ClientConfig::new(server.addr.to_string(), dir.path(), "reader-new-phone");
    config.ca_pem = Some(server.cert_pem());
    let client = Client::new(config)?;
    let seen = Arc::new(Seen::default());
    client.set_listener(seen.clone());
    let bar = ui::spinner("catching up");
    let t0 = Instant::now();
    client.login("reader", &raw::token("reader"))?;
    let limit = Duration::from_secs(600);
    let listed = until(limit, || {
        client.conversations().map(|c| c.len()).unwrap_or(0) >= convs
    })
    .await;
    let summaries_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(listed, "conversations not all listed within {limit:?}");
    let stored = until(limit, || {
        let (stored, head) = *seen.sync.lock().expect("lock");
        head >= total && stored >= head
    })
    .await;
    let all_stored_secs = t0.elapsed().as_secs_f64();
    anyhow::ensure!(stored, "backlog not stored within {limit:?}");
    let stored_locally = client
        .conversations()?
        .iter()
        .map(|c| {
            client
                .messages(c.kind, &c.id, None, u32::MAX)
                .map_or(0, |m| m.len() as u64)
        })
        .sum();
    ui::done(
        &bar,
        format!("summaries in {summaries_secs:.2} s, everything in {all_stored_secs:.2} s"),
    );
    client.shutdown();
    Ok(Report {
        messages: args.messages,
        conversations: convs,
        fill_secs,
        summaries_secs,
        all_stored_secs,
        stored_locally,
    })
}
