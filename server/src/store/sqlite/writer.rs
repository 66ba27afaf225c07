//! The group-commit writer: one thread owns the write connection, takes every job
//! that is waiting (up to [`MAX_BATCH`]), runs them in one transaction (each in its own
//! savepoint, so one bad job does not sink the others), commits, and only then replies.

use std::time::Instant;

use rusqlite::{Connection, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use super::{StoreError, groups, marks, order, outbox, timeline};
use crate::store::ops::{WriteOp, WriteReply};

/// Most jobs committed in one transaction. It also bounds how long one commit takes, and
/// so how long a message that arrives during it waits. 2,048 was tried together with a
/// checkpointer thread (`d41dfd6`): p99 at 50 % load higher in three runs of four, no
/// steady gain in capacity; 2,048 alone was measured only once (docs/bench/analysis.md,
/// "Cost per message").
pub const MAX_BATCH: usize = 512;

pub(super) struct Job {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

pub(super) fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    // Timestamps never go back, across restarts too: seeded from the newest message
    // (ids grow with the write order, and each message's time is at least the last
    // one's), so a clock stepped back across a restart cannot date new messages older.
    let mut last_ts = conn
        .query_row(
            "SELECT server_ts FROM messages ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_or(0, |ts| ts.max(0) as u64);
    while let Some(batch) = next_batch(&mut rx) {
        let started = Instant::now();
        let outcome = (|| -> Result<Vec<Result<WriteReply, StoreError>>, rusqlite::Error> {
            let tx = conn.transaction()?;
            let mut results = Vec::with_capacity(batch.len());
            for job in &batch {
                tx.prepare_cached("SAVEPOINT job")?.execute([])?;
                let r = apply(&tx, &job.op, &mut last_ts);
                if r.is_err() {
                    tx.prepare_cached("ROLLBACK TO job")?.execute([])?;
                }
                tx.prepare_cached("RELEASE job")?.execute([])?;
                let r = match r {
                    Err(e) => after_refusal(&tx, &job.op, e),
                    ok => ok,
                };
                results.push(r);
            }
            tx.commit()?;
            Ok(results)
        })();
        metrics::histogram!("tern_store_commit_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("tern_store_batch_size").record(batch.len() as f64);
        match outcome {
            Ok(results) => {
                for (job, r) in batch.into_iter().zip(results) {
                    match &r {
                        Err(e) if e.is_refusal() => {
                            tracing::debug!(error = %e, "store job refused")
                        }
                        Err(e) => tracing::error!(error = %e, "store job failed"),
                        Ok(_) => {}
                    }
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "store commit failed; nothing in the batch was acknowledged");
                metrics::counter!("tern_store_commit_failures_total").increment(1);
                // The cause (a full disk, say) is in the log line above; every caller
                // gets the same answer: not stored.
                let cause = StoreError::from(e).to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::CommitFailed(cause.clone())));
                }
            }
        }
    }
    tracing::info!("store writer stopped");
}

/// Blocks for the next job, then takes every job already waiting behind it, up to
/// [`MAX_BATCH`]: a batch never waits for more, so at low load commits stay prompt.
/// `None` once every sender is gone. (Also the batching rule of the benchmarks'
/// durable echo, which is measured as the ceiling of this writer.)
pub fn next_batch<T>(rx: &mut mpsc::Receiver<T>) -> Option<Vec<T>> {
    let mut batch = vec![rx.blocking_recv()?];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
    Some(batch)
}

fn apply(tx: &Transaction<'_>, op: &WriteOp, last_ts: &mut u64) -> Result<WriteReply, StoreError> {
    match op {
        WriteOp::Store(m) => timeline::store_message(tx, m, last_ts).map(WriteReply::Stored),
        WriteOp::Ack { user, device, seq } => {
            timeline::ack_delivered(tx, user, device, *seq).map(WriteReply::Fanout)
        }
        WriteOp::Login { user, device } => {
            tx.prepare_cached(
                "INSERT INTO users (user, last_login_ms) VALUES (?1, ?2)
                 ON CONFLICT (user) DO UPDATE SET last_login_ms = excluded.last_login_ms",
            )?
            .execute(params![user, tern_protocol::unix_ms() as i64])?;
            tx.prepare_cached("INSERT OR IGNORE INTO devices (user, device) VALUES (?1, ?2)")?
                .execute(params![user, device])?;
            Ok(WriteReply::Done)
        }
        WriteOp::Flush => Ok(WriteReply::Done),
        WriteOp::Group(op, limits) => groups::apply(tx, op, *limits).map(WriteReply::Group),
        WriteOp::MarkRead {
            user,
            kind,
            conversation,
            up_to_seq,
            group_receipts_max,
        } => marks::mark_read(
            tx,
            user,
            *kind,
            conversation,
            *up_to_seq,
            *group_receipts_max,
        )
        .map(WriteReply::Fanout),
        WriteOp::Recall {
            user,
            server_msg_id,
            window_ms,
        } => marks::recall(tx, user, *server_msg_id, *window_ms).map(WriteReply::Fanout),
        WriteOp::PushToken {
            user,
            device,
            platform,
            provider,
            token,
        } => outbox::set_push_token(tx, user, device, *platform, provider, token)
            .map(|_| WriteReply::Done),
        WriteOp::WebhookEnqueue(hook, payload) => {
            outbox::enqueue(tx, hook, payload).map(|_| WriteReply::Done)
        }
        WriteOp::WebhookDone(id) => outbox::done(tx, *id).map(|_| WriteReply::Done),
        WriteOp::WebhookRetry(id, at) => outbox::retry(tx, *id, *at).map(|_| WriteReply::Done),
        WriteOp::SkipSend {
            user,
            device,
            send_seq,
        } => order::take_send_seq(tx, user, device, *send_seq).map(|_| WriteReply::Done),
    }
}

/// A job failed and its savepoint was rolled back. A message refused for good still
/// uses up its send seq (the rollback undid that), so the device's next message is
/// taken; the refusal itself is the answer either way.
fn after_refusal(
    tx: &Transaction<'_>,
    op: &WriteOp,
    refusal: StoreError,
) -> Result<WriteReply, StoreError> {
    if let WriteOp::Store(m) = op {
        if m.send_seq > 0 && refusal.is_final_refusal() {
            order::take_send_seq(tx, &m.sender, &m.device, m.send_seq)?;
        }
    }
    Err(refusal)
}
