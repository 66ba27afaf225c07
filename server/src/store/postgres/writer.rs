//! The writer lanes: each lane owns one connection and runs the jobs queued on it in
//! order, replying only after `COMMIT` returned. A job goes to the lane of its user (the
//! sender of a message, the reader of a mark, ...), so one device's writes are taken in
//! the order they were queued; the lanes run side by side.
//!
//! **Batches.** The two writes every message makes — a direct message and a delivery
//! ACK — are batched: whatever of them is waiting on a lane (up to [`MAX_BATCH`]) goes
//! to `tern_write_batch` (migration 0003) in one transaction and one WAL flush. That
//! function takes every row lock the batch needs *first*, in the global order (device
//! rows, then head rows by user id), and only then runs each job; so batches of
//! different lanes and servers cannot deadlock. (The first design ran any jobs in one
//! transaction, locking job by job: three stores with three lanes deadlocked within
//! seconds, and each deadlock costs PostgreSQL's `deadlock_timeout`, 1 s.) Every other
//! job runs in a transaction of its own and takes its locks in the same order
//! ([`super::timeline`]). A batch holds its locks until it commits, so large batches on
//! several lanes queue behind each other: [`MAX_BATCH`] is kept small (see
//! docs/bench/stores.md).
//!
//! A deadlock or serialization failure that happens anyway is rolled back and run again
//! ([`MAX_ATTEMPTS`]), never surfaced as a lost message. A lost connection fails the job
//! with a retryable error (the client sends again; the idempotency key makes a resend of
//! a message that did commit a duplicate, not a second copy).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use tokio::sync::{mpsc, oneshot};

use tern_protocol::pb;

use super::{StoreError, Tx, execute, groups, marks, order, outbox, query, schema, timeline};
use crate::store::ops::{WriteOp, WriteReply};

/// Runs of one job (or batch) before its conflicts are reported as a failure.
const MAX_ATTEMPTS: u32 = 8;
/// Most jobs in one batch.
const MAX_BATCH: usize = 16;

/// What the lanes of a store did, for tests and diagnostics.
#[derive(Default)]
pub(super) struct LaneStats {
    /// Jobs or batches run again after a deadlock or serialization failure.
    pub(super) conflicts: AtomicU64,
    /// Jobs written in batches of more than one.
    pub(super) batched: AtomicU64,
}

pub(super) struct Job {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

pub(super) async fn lane(
    pool: Pool,
    described: String,
    mut rx: mpsc::Receiver<Job>,
    mut last_ts: u64,
    stats: Arc<LaneStats>,
) {
    let conflicts = &stats.conflicts;
    let mut conn: Option<Object> = None;
    let mut held: Option<Job> = None;
    loop {
        let job = match held.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => break,
            },
        };
        if batchable(&job.op) {
            // Everything batchable that is waiting, up to the first job that is not.
            let mut batch = vec![job];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(next) if batchable(&next.op) => batch.push(next),
                    Ok(next) => {
                        held = Some(next);
                        break;
                    }
                    Err(_) => break,
                }
            }
            if batch.len() > 1 {
                let started = Instant::now();
                let ops: Vec<&WriteOp> = batch.iter().map(|j| &j.op).collect();
                stats
                    .batched
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                let results =
                    run_batch(&pool, &described, &mut conn, &ops, &mut last_ts, conflicts).await;
                metrics::histogram!("tern_store_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("tern_store_batch_size").record(batch.len() as f64);
                for (job, r) in batch.into_iter().zip(results) {
                    report(&r);
                    let _ = job.reply.send(r);
                }
                continue;
            }
            let job = batch.pop().expect("one job");
            single(&pool, &described, &mut conn, job, &mut last_ts, conflicts).await;
            continue;
        }
        single(&pool, &described, &mut conn, job, &mut last_ts, conflicts).await;
    }
    tracing::info!("store writer lane stopped");
}

/// Runs one job alone and replies.
async fn single(
    pool: &Pool,
    described: &str,
    conn: &mut Option<Object>,
    job: Job,
    last_ts: &mut u64,
    conflicts: &AtomicU64,
) {
    let started = Instant::now();
    let r = if matches!(job.op, WriteOp::Flush) {
        Ok(WriteReply::Done)
    } else {
        run(pool, described, conn, &job.op, last_ts, conflicts).await
    };
    metrics::histogram!("tern_store_commit_seconds").record(started.elapsed().as_secs_f64());
    report(&r);
    let _ = job.reply.send(r);
}

/// Logs and counts a write that failed for a reason other than a refusal.
fn report(r: &Result<WriteReply, StoreError>) {
    if let Err(e) = r {
        if !e.is_refusal() {
            metrics::counter!("tern_store_commit_failures_total").increment(1);
            tracing::error!(error = %e, "store write failed; nothing was acknowledged");
        }
    }
}

/// Jobs `tern_write_batch` takes: a direct message (without a c2s webhook) and a
/// delivery ACK, the two writes every message makes.
fn batchable(op: &WriteOp) -> bool {
    match op {
        WriteOp::Store(m) => m.kind != pb::ConversationKind::Group && !m.to_service,
        WriteOp::Ack { .. } => true,
        _ => false,
    }
}

/// Several batchable jobs in one transaction (see migration 0003): every lock first in
/// the global order, then each job as alone, one commit. A conflict runs the batch
/// again; an error that is not the database's availability runs each job alone, so
/// one job that cannot be written does not fail the others.
async fn run_batch(
    pool: &Pool,
    described: &str,
    conn: &mut Option<Object>,
    ops: &[&WriteOp],
    last_ts: &mut u64,
    conflicts: &AtomicU64,
) -> Vec<Result<WriteReply, StoreError>> {
    let mut attempt = 1;
    let outcome = loop {
        let mut c = match conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => match schema::connect(pool, described).await {
                Ok(c) => c,
                Err(e) => break Err(e),
            },
        };
        let r = batch_once(&mut c, ops, last_ts).await;
        if !c.is_closed() {
            *conn = Some(c);
        }
        match r {
            Err(StoreError::Conflict(cause)) if attempt < MAX_ATTEMPTS => {
                conflicts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tern_store_retries_total").increment(1);
                tracing::debug!(%cause, attempt, "store batch conflicted; running it again");
                let pause = rand::random::<u64>() % (2 << attempt);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                attempt += 1;
            }
            other => break other,
        }
    };
    match outcome {
        Ok(results) => results,
        Err(StoreError::Unavailable(cause)) => ops
            .iter()
            .map(|_| Err(StoreError::Unavailable(cause.clone())))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, jobs = ops.len(), "store batch failed; writing its jobs one by one");
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(run(pool, described, conn, op, last_ts, conflicts).await);
            }
            results
        }
    }
}

async fn batch_once(
    c: &mut Object,
    ops: &[&WriteOp],
    last_ts: &mut u64,
) -> Result<Vec<Result<WriteReply, StoreError>>, StoreError> {
    let messages: Vec<&crate::store::NewMessage> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Store(m) => Some(m),
            _ => None,
        })
        .collect();
    let acks: Vec<(&str, &str, i64)> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Ack { user, device, seq } => Some((
                user.as_str(),
                device.as_str(),
                (*seq).min(i64::MAX as u64) as i64,
            )),
            _ => None,
        })
        .collect();
    let ts = tern_protocol::unix_ms().max(*last_ts);
    let col = |f: &dyn Fn(&crate::store::NewMessage) -> i64| -> Vec<i64> {
        messages.iter().map(|m| f(m)).collect()
    };
    let senders: Vec<&str> = messages.iter().map(|m| m.sender.as_str()).collect();
    let cmids: Vec<&[u8]> = messages.iter().map(|m| &m.client_msg_id.0[..]).collect();
    let recipients: Vec<&str> = messages.iter().map(|m| m.recipient.as_str()).collect();
    let kinds: Vec<i32> = messages.iter().map(|m| m.kind as i32).collect();
    let content_types = col(&|m| m.content_type as i64);
    let bodies: Vec<&[u8]> = messages.iter().map(|m| &m.body[..]).collect();
    let client_ts = col(&|m| m.client_ts_ms.min(i64::MAX as u64) as i64);
    let devices: Vec<&str> = messages.iter().map(|m| m.device.as_str()).collect();
    let send_seqs = col(&|m| m.send_seq.min(i64::MAX as u64) as i64);
    let known: Vec<bool> = messages.iter().map(|m| m.require_known_recipient).collect();
    let ack_users: Vec<&str> = acks.iter().map(|a| a.0).collect();
    let ack_devices: Vec<&str> = acks.iter().map(|a| a.1).collect();
    let ack_seqs: Vec<i64> = acks.iter().map(|a| a.2).collect();
    let direct = pb::ConversationKind::Direct as i32;

    let tx = c.transaction().await?;
    let rows = query(
        &tx,
        "SELECT * FROM tern_write_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        &[
            &senders,
            &cmids,
            &recipients,
            &kinds,
            &content_types,
            &bodies,
            &client_ts,
            &devices,
            &send_seqs,
            &known,
            &(ts as i64),
            &ack_users,
            &ack_devices,
            &ack_seqs,
            &direct,
        ],
    )
    .await?;
    // Results in the batch function's numbering: messages first, then ACKs.
    let mut by_message: Vec<Option<Result<WriteReply, StoreError>>> =
        (0..messages.len()).map(|_| None).collect();
    let mut receipts: Vec<Vec<timeline::Delivered>> = (0..acks.len()).map(|_| vec![]).collect();
    for r in &rows {
        let job = r.get::<_, i32>(0) as usize - 1;
        if job < messages.len() {
            by_message[job] = Some(
                timeline::direct_result(&tx, messages[job], r, 1, ts)
                    .await
                    .map(WriteReply::Stored),
            );
        } else {
            let a = job - messages.len();
            receipts[a].push(timeline::Delivered {
                by: acks[a].0.to_owned(),
                sender: r.get(8),
                seq: r.get::<_, i64>(3) as u64,
                up_to: r.get::<_, i64>(2) as u64,
            });
        }
    }
    let counts: Vec<usize> = receipts.iter().map(Vec::len).collect();
    let mut written = timeline::write_delivered(&tx, receipts.into_iter().flatten().collect())
        .await?
        .into_iter();
    tx.commit().await?;
    *last_ts = ts;
    let mut by_ack = counts
        .into_iter()
        .map(|n| Ok(WriteReply::Fanout(written.by_ref().take(n).collect())));
    let mut by_message = by_message.into_iter();
    Ok(ops
        .iter()
        .map(|op| match op {
            WriteOp::Store(_) => by_message
                .next()
                .flatten()
                .unwrap_or_else(|| Err(StoreError::Database("no result for a message".into()))),
            _ => by_ack.next().expect("one result per ACK"),
        })
        .collect())
}

/// One job in its own transaction, run again after a conflict.
async fn run(
    pool: &Pool,
    described: &str,
    conn: &mut Option<Object>,
    op: &WriteOp,
    last_ts: &mut u64,
    conflicts: &AtomicU64,
) -> Result<WriteReply, StoreError> {
    let mut attempt = 1;
    loop {
        let mut c = match conn.take() {
            Some(c) if !c.is_closed() => c,
            _ => schema::connect(pool, described).await?,
        };
        let r = attempt_once(&mut c, op, last_ts).await;
        if !c.is_closed() {
            *conn = Some(c);
        }
        match r {
            Err(StoreError::Conflict(cause)) if attempt < MAX_ATTEMPTS => {
                conflicts.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tern_store_retries_total").increment(1);
                tracing::debug!(%cause, attempt, "store write conflicted; running it again");
                let pause = rand::random::<u64>() % (2 << attempt);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn attempt_once(
    c: &mut Object,
    op: &WriteOp,
    last_ts: &mut u64,
) -> Result<WriteReply, StoreError> {
    if let WriteOp::Store(m) = op {
        if m.kind != tern_protocol::pb::ConversationKind::Group && !m.to_service {
            // One statement, its own transaction (a refusal for good it makes keeps
            // the send seq taken, as `after_refusal` does for the others).
            return timeline::store_direct(&*c, m, last_ts)
                .await
                .map(WriteReply::Stored);
        }
    }
    let tx = c.transaction().await?;
    match apply(&tx, op, last_ts).await {
        Ok(reply) => {
            tx.commit().await.map_err(|e| match StoreError::from(e) {
                e @ (StoreError::Conflict(_) | StoreError::Unavailable(_)) => e,
                e => StoreError::CommitFailed(e.to_string()),
            })?;
            Ok(reply)
        }
        Err(e @ (StoreError::Conflict(_) | StoreError::Unavailable(_))) => Err(e),
        Err(refusal) => {
            tx.rollback().await?;
            after_refusal(c, op, refusal).await
        }
    }
}

async fn apply(tx: &Tx<'_>, op: &WriteOp, last_ts: &mut u64) -> Result<WriteReply, StoreError> {
    Ok(match op {
        WriteOp::Store(m) => WriteReply::Stored(timeline::store_message(tx, m, last_ts).await?),
        WriteOp::Ack { user, device, seq } => {
            WriteReply::Fanout(timeline::ack_delivered(tx, user, device, *seq).await?)
        }
        WriteOp::Login { user, device } => {
            // The device row before the user's (the order every write takes them in).
            execute(
                tx,
                "INSERT INTO devices (uid, device) VALUES ($1, $2) ON CONFLICT (uid, device) DO NOTHING",
                &[user, device],
            )
            .await?;
            execute(
                tx,
                "INSERT INTO users (uid, last_login_ms) VALUES ($1, $2)
                 ON CONFLICT (uid) DO UPDATE SET last_login_ms = excluded.last_login_ms",
                &[user, &(tern_protocol::unix_ms() as i64)],
            )
            .await?;
            WriteReply::Done
        }
        WriteOp::Flush => WriteReply::Done,
        WriteOp::Group(op, limits) => WriteReply::Group(groups::apply(tx, op, *limits).await?),
        WriteOp::MarkRead {
            user,
            kind,
            conversation,
            up_to_seq,
            group_receipts_max,
        } => WriteReply::Fanout(
            marks::mark_read(
                tx,
                user,
                *kind,
                conversation,
                *up_to_seq,
                *group_receipts_max,
            )
            .await?,
        ),
        WriteOp::Recall {
            user,
            server_msg_id,
            window_ms,
        } => WriteReply::Fanout(marks::recall(tx, user, *server_msg_id, *window_ms).await?),
        WriteOp::PushToken {
            user,
            device,
            platform,
            provider,
            token,
        } => {
            outbox::set_push_token(tx, user, device, *platform, provider, token).await?;
            WriteReply::Done
        }
        WriteOp::WebhookEnqueue(hook, payload) => {
            outbox::enqueue(tx, hook, payload).await?;
            WriteReply::Done
        }
        WriteOp::WebhookDone(id) => {
            outbox::done(tx, *id).await?;
            WriteReply::Done
        }
        WriteOp::WebhookRetry(id, at) => {
            outbox::retry(tx, *id, *at).await?;
            WriteReply::Done
        }
        WriteOp::SkipSend {
            user,
            device,
            send_seq,
        } => {
            order::take_send_seq(tx, user, device, *send_seq).await?;
            WriteReply::Done
        }
    })
}

/// As in the SQLite writer: a message refused for good still uses up its send seq (in a
/// transaction of its own: the refused one was rolled back).
async fn after_refusal(
    c: &mut Object,
    op: &WriteOp,
    refusal: StoreError,
) -> Result<WriteReply, StoreError> {
    if let WriteOp::Store(m) = op {
        if m.send_seq > 0 && refusal.is_final_refusal() {
            let tx = c.transaction().await?;
            order::take_send_seq(&tx, &m.sender, &m.device, m.send_seq).await?;
            tx.commit().await?;
        }
    }
    Err(refusal)
}
