//! The group-commit writer: one thread owns the write connection, takes every job
//! that is waiting (up to [`MAX_BATCH`]), runs them in one transaction (so one bad job
//! does not sink the others, each is either refused before it writes or runs in its own
//! savepoint), commits, and only then replies.

use std::time::Instant;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::tx::{Heads, Tx};
use super::{StoreError, groups, marks, order, outbox, timeline};
use crate::store::ops::{WriteOp, WriteReply};

/// Most jobs committed in one transaction. It also bounds how long one commit takes, and
/// so how long a message that arrives during it waits. 2,048 was tried together with a
/// checkpointer thread that ran every 250 ms (`d41dfd6`): p99 at 50 % load higher in
/// three runs of four, no steady gain in capacity; 2,048 alone was measured only once
/// (docs/bench/analysis.md, "Cost per message"). Today's checkpointer (`checkpoint.rs`)
/// is woken by the WAL's growth, with these batches.
pub const MAX_BATCH: usize = 512;

pub(super) struct Job {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

pub(super) fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Job>) {
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
    // What this writer last wrote as each head (see `tx::Heads`).
    let heads = Heads::default();
    while let Some(batch) = next_batch(&mut rx) {
        let started = Instant::now();
        let outcome = match run_batch(&conn, &heads, &batch, &mut last_ts, false) {
            Ok(Batch::RolledBack) => {
                // A job without a savepoint failed after writing: the whole
                // transaction was rolled back, and the batch runs again with a
                // savepoint per job.
                metrics::counter!("tern_store_batches_redone_total").increment(1);
                tracing::warn!(
                    jobs = batch.len(),
                    "store batch rolled back after a failed job; running it again job by job"
                );
                run_batch(&conn, &heads, &batch, &mut last_ts, true)
            }
            first => first,
        };
        let outcome = match outcome {
            Ok(Batch::Committed(results)) => Ok(results),
            // With a savepoint per job each failed job is undone alone, so the second
            // run commits or fails; never rolled back again.
            Ok(Batch::RolledBack) => Err(StoreError::CommitFailed(
                "rolled back again with a savepoint per job".into(),
            )),
            Err(e) => Err(StoreError::from(e)),
        };
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
                let cause = e.to_string();
                for job in batch {
                    let _ = job.reply.send(Err(StoreError::CommitFailed(cause.clone())));
                }
            }
        }
    }
    tracing::info!("store writer stopped");
}

/// What running a batch came to, short of a database error.
enum Batch {
    /// Committed: each job's result, in the batch's order.
    Committed(Vec<Result<WriteReply, StoreError>>),
    /// Nothing committed: a job without a savepoint failed after it wrote, and only
    /// rolling back the whole transaction undid that. The batch must run again with a
    /// savepoint per job.
    RolledBack,
}

/// Runs the batch in one transaction and commits it. Each job that can refuse after
/// writing (`needs_savepoint`), or every job when `safe`, runs in its own savepoint, so
/// a refused job is undone and the others stand. A job without one that fails having
/// written nothing (its checks come first) needs nothing undone; one that fails after it
/// wrote rolls the batch back ([`Batch::RolledBack`]).
fn run_batch(
    conn: &Connection,
    heads: &Heads,
    batch: &[Job],
    last_ts: &mut u64,
    safe: bool,
) -> Result<Batch, rusqlite::Error> {
    let tx = Tx::begin(conn, heads)?;
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let savepoint = safe || needs_savepoint(&job.op);
        if savepoint {
            tx.prepare_cached("SAVEPOINT job")?.execute([])?;
        }
        let changes = tx.total_changes();
        let r = apply(&tx, &job.op, last_ts);
        if savepoint {
            if r.is_err() {
                tx.rollback_to("job")?;
            }
            tx.prepare_cached("RELEASE job")?.execute([])?;
        } else if r.is_err() && (tx.total_changes() != changes || tx.is_autocommit()) {
            // It wrote before failing (or SQLite ended the transaction): only a
            // rollback of the whole batch undoes that. Dropping `tx` rolls it back.
            return Ok(Batch::RolledBack);
        }
        let r = match r {
            Err(e) => after_refusal(&tx, &job.op, e),
            ok => ok,
        };
        results.push(r);
    }
    tx.commit()?;
    Ok(Batch::Committed(results))
}

/// Whether a job runs in its own savepoint. The jobs on the path of every message
/// (storing it, a delivery ACK, a login) make every check before their first write, so
/// a refusal leaves the transaction as it was and needs nothing undone; the batch runs
/// them bare. A savepoint per job copied every page the job touched into a sub-journal
/// (11 % of the writer thread under load, docs/bench/analysis.md). The rest (group
/// changes, read marks, recalls, webhooks, push tokens) are rare and keep theirs.
fn needs_savepoint(op: &WriteOp) -> bool {
    !matches!(
        op,
        WriteOp::Store(_)
            | WriteOp::Ack { .. }
            | WriteOp::Login { .. }
            | WriteOp::Flush
            | WriteOp::SkipSend { .. }
    )
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

fn apply(tx: &Tx<'_>, op: &WriteOp, last_ts: &mut u64) -> Result<WriteReply, StoreError> {
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
fn after_refusal(tx: &Tx<'_>, op: &WriteOp, refusal: StoreError) -> Result<WriteReply, StoreError> {
    if let WriteOp::Store(m) = op {
        if m.send_seq > 0 && refusal.is_final_refusal() {
            order::take_send_seq(tx, &m.sender, &m.device, m.send_seq)?;
        }
    }
    Err(refusal)
}

#[cfg(test)]
mod tests {
    //! The batch without savepoints: a refusal made before any write leaves the other
    //! jobs standing, and a job that fails after writing makes the batch run again job
    //! by job, so only that job is undone.

    use super::*;
    use crate::store::NewMessage;
    use crate::store::sqlite::schema::test_writer as conn;
    use crate::store::suite::msg;

    fn job(op: WriteOp) -> Job {
        // The replies are not read here: `run_batch` returns the results itself.
        Job {
            op,
            reply: oneshot::channel().0,
        }
    }

    fn ordered(n: u8, send_seq: u64) -> NewMessage {
        NewMessage {
            device: "phone".into(),
            send_seq,
            ..msg("alice", "bob", n)
        }
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn a_refusal_before_any_write_needs_no_redo_and_the_others_stand() {
        let (_dir, conn) = conn();
        let heads = Heads::default();
        let batch = vec![
            job(WriteOp::Store(ordered(1, 1))),
            job(WriteOp::Store(ordered(9, 5))), // out of order: refused, no write
            job(WriteOp::Store(ordered(2, 2))),
        ];
        let mut ts = 0;
        let Batch::Committed(results) = run_batch(&conn, &heads, &batch, &mut ts, false).unwrap()
        else {
            panic!("no redo for a refusal made before writing");
        };
        assert!(results[0].is_ok());
        assert!(matches!(
            results[1],
            Err(StoreError::OutOfOrder { expected: 2 })
        ));
        assert!(results[2].is_ok());
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM messages"), 2);
        assert_eq!(
            count(&conn, "SELECT send_seq FROM devices WHERE device = 'phone'"),
            2
        );
    }

    #[test]
    fn a_job_that_fails_after_writing_is_undone_alone_by_a_redo() {
        let (_dir, conn) = conn();
        let heads = Heads::default();
        // Storing a message writes the device's send seq, then takes a seq in `users`:
        // without that table the job fails after its first write.
        conn.execute_batch("DROP TABLE users").unwrap();
        let batch = vec![
            job(WriteOp::WebhookEnqueue("h".into(), b"x".to_vec())),
            job(WriteOp::Store(ordered(1, 1))),
            job(WriteOp::WebhookEnqueue("h".into(), b"y".to_vec())),
        ];
        let mut ts = 0;
        assert!(
            matches!(
                run_batch(&conn, &heads, &batch, &mut ts, false).unwrap(),
                Batch::RolledBack
            ),
            "a failure after a write without a savepoint rolls the batch back"
        );
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM webhook_outbox"), 0);
        let Batch::Committed(results) = run_batch(&conn, &heads, &batch, &mut ts, true).unwrap()
        else {
            panic!("the safe run commits");
        };
        assert!(results[0].is_ok() && results[2].is_ok());
        assert!(results[1].is_err());
        assert_eq!(count(&conn, "SELECT COUNT(*) FROM webhook_outbox"), 2);
        assert_eq!(
            count(&conn, "SELECT COUNT(*) FROM devices WHERE send_seq > 0"),
            0,
            "the failed job's first write was undone"
        );
    }
}
