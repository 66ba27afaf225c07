//! The writer lanes: each lane owns one connection and runs its jobs one transaction
//! each, in the order they were queued, replying only after `COMMIT` returned. A job
//! goes to the lane of its user (the sender of a message, the reader of a mark, ...),
//! so one device's writes are taken in order; the lanes run side by side, and
//! PostgreSQL flushes the commits that arrive together with one WAL write (its own
//! group commit), so more lanes means more messages per fsync.
//!
//! **Why not several jobs per transaction** (as the SQLite writer does): a transaction
//! holds its row locks until commit, so a batch holds the locks of all its jobs, taken
//! job by job; two batches (two lanes, two servers) then take rows in different orders
//! and deadlock, and PostgreSQL needs `deadlock_timeout` (1 s) to notice. Measured: three
//! stores with three lanes each deadlocked within seconds. One job per transaction takes
//! its locks in one fixed order ([`super::timeline`]), so writers cannot deadlock; a
//! deadlock or serialization failure that happens anyway is rolled back and the job run
//! again ([`MAX_ATTEMPTS`]), never surfaced as a lost message.
//!
//! A lost connection fails the job with a retryable error (the client sends again; the
//! idempotency key makes a resend of a message that did commit a duplicate, not a
//! second copy).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::{Object, Pool};
use tokio::sync::{mpsc, oneshot};

use super::{StoreError, Tx, execute, groups, marks, order, outbox, schema, timeline};
use crate::store::ops::{WriteOp, WriteReply};

/// Runs of one job before its conflicts are reported as a failure.
const MAX_ATTEMPTS: u32 = 8;

pub(super) struct Job {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

pub(super) async fn lane(
    pool: Pool,
    described: String,
    mut rx: mpsc::Receiver<Job>,
    mut last_ts: u64,
    conflicts: Arc<AtomicU64>,
) {
    let mut conn: Option<Object> = None;
    while let Some(job) = rx.recv().await {
        let started = Instant::now();
        let r = if matches!(job.op, WriteOp::Flush) {
            Ok(WriteReply::Done)
        } else {
            run(
                &pool,
                &described,
                &mut conn,
                &job.op,
                &mut last_ts,
                &conflicts,
            )
            .await
        };
        metrics::histogram!("tern_store_commit_seconds").record(started.elapsed().as_secs_f64());
        if let Err(e) = &r {
            if !e.is_final_refusal()
                && !matches!(
                    e,
                    StoreError::OutOfOrder { .. }
                        | StoreError::GroupFull
                        | StoreError::MessageNotFound
                        | StoreError::RecallExpired
                )
            {
                metrics::counter!("tern_store_commit_failures_total").increment(1);
                tracing::error!(error = %e, "store write failed; nothing was acknowledged");
            }
        }
        let _ = job.reply.send(r);
    }
    tracing::info!("store writer lane stopped");
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
