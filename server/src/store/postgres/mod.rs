//! The PostgreSQL store: the same contract as the SQLite store, on a database that is
//! replicated, backed up and shared by several servers.
//!
//! **Writes** go through writer *lanes* ([`writer`]): each lane is one connection that
//! runs its jobs one transaction each, so "durable before acknowledged" means the reply
//! is sent only after `COMMIT` returned (with `synchronous_commit` on, after the WAL
//! flush; the commits of all lanes that arrive together share one flush). A job is
//! queued on its user's lane when the trait method is called, which keeps a session's
//! pipelined sends in order, like the SQLite writer.
//!
//! **Several writers** (lanes, servers) share timelines safely: the per-user head rows
//! are taken in one fixed order ([`timeline`]), so writers do not deadlock, and a
//! conflict that happens anyway is rolled back and run again. Per-user seqs stay
//! contiguous and unique because a seq is taken under the head row's lock and given
//! back by the rollback if the job fails.
//!
//! **Reads** use a pool of connections ([`deadpool_postgres`]); a read that must see one
//! moment (summaries, the large-group list) runs in a read-only repeatable-read
//! transaction.
//!
//! **The database down**: a write answers [`StoreError::Unavailable`] (the client is told
//! `STORE_UNAVAILABLE` and sends again later); the lane reconnects on its next batch.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Object, Pool};
use tern_protocol::pb;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::ops::{WriteOp, WriteReply};
use super::{
    Fanout, GroupLimits, GroupOp, GroupOutcome, NewMessage, PushTarget, Store, StoreError,
    StoreFuture, StoredMessage, SummaryPage, TimelinePage, WebhookJob,
};

mod groups;
mod import;
mod marks;
mod order;
mod outbox;
mod schema;
pub mod testing;
mod timeline;
mod writer;

pub use import::{ImportReport, import_sqlite};
pub use schema::PgSettings;
use writer::Job;

/// `url` with its password replaced by `***` (for logs and `config check`).
pub fn masked_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A transaction on a pooled connection.
pub(super) type Tx<'a> = deadpool_postgres::Transaction<'a>;

type Params<'a> = [&'a (dyn ToSql + Sync)];

/// Runs a (cached, prepared) statement and returns its rows.
pub(super) async fn query(
    c: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query(&statement, params).await?)
}

/// Runs a statement that returns at most one row.
pub(super) async fn query_opt(
    c: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_opt(&statement, params).await?)
}

/// Runs a statement that returns exactly one row.
pub(super) async fn query_one(
    c: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Result<Row, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.query_one(&statement, params).await?)
}

/// Runs a statement and returns the number of rows it changed.
pub(super) async fn execute(
    c: &impl GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await?;
    Ok(c.execute(&statement, params).await?)
}

impl From<tokio_postgres::Error> for StoreError {
    /// Sorts PostgreSQL's errors by cause: the connection, a conflict to run again, the
    /// disk, damaged data, or the database itself.
    fn from(e: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState as S;
        let Some(db) = e.as_db_error() else {
            let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
            return if e.is_closed() || io {
                StoreError::Unavailable(e.to_string())
            } else {
                StoreError::Database(e.to_string())
            };
        };
        let code = db.code();
        let text = format!("{}: {}", code.code(), db.message());
        match *code {
            S::T_R_SERIALIZATION_FAILURE | S::T_R_DEADLOCK_DETECTED => StoreError::Conflict(text),
            S::DISK_FULL | S::IO_ERROR => StoreError::Io(text),
            S::DATA_CORRUPTED | S::INDEX_CORRUPTED => StoreError::Corrupt(text),
            S::ADMIN_SHUTDOWN
            | S::CRASH_SHUTDOWN
            | S::CANNOT_CONNECT_NOW
            | S::TOO_MANY_CONNECTIONS => StoreError::Unavailable(text),
            _ if code.code().starts_with("08") => StoreError::Unavailable(text),
            _ => StoreError::Database(text),
        }
    }
}

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    pool: Pool,
    described: String,
    lanes: Vec<mpsc::Sender<Job>>,
    generation: u64,
    stats: Arc<writer::LaneStats>,
}

impl PgStore {
    /// Connects, applies missing migrations (under a lock), and starts the writer lanes.
    /// Fails with the reason when the database cannot be reached, refuses the
    /// credentials, or has a schema newer than this binary.
    pub async fn open(settings: &PgSettings) -> Result<Self, StoreError> {
        let (pool, described) = schema::pool(settings)?;
        let mut conn = schema::connect(&pool, &described).await?;
        schema::migrate(&mut conn).await?;
        let generation = conn
            .query_one("SELECT value FROM meta WHERE key = 'generation'", &[])
            .await?
            .get::<_, i64>(0) as u64;
        // Timestamps never go back (see the SQLite writer), across servers too.
        let last_ts = conn
            .query_one("SELECT COALESCE(MAX(server_ts), 0) FROM messages", &[])
            .await?
            .get::<_, i64>(0)
            .max(0) as u64;
        drop(conn);
        let stats = Arc::new(writer::LaneStats::default());
        let lanes = (0..settings.writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(8192);
                tokio::spawn(writer::lane(
                    pool.clone(),
                    described.clone(),
                    rx,
                    last_ts,
                    stats.clone(),
                ));
                tx
            })
            .collect();
        tracing::info!(database = %described, writers = settings.writers.max(1), "PostgreSQL store open");
        Ok(PgStore {
            pool,
            described,
            lanes,
            generation,
            stats,
        })
    }

    /// Applies missing migrations and returns how many (`tern-server migrate`).
    pub async fn migrate(settings: &PgSettings) -> Result<usize, StoreError> {
        let (pool, described) = schema::pool(settings)?;
        let mut conn = schema::connect(&pool, &described).await?;
        schema::migrate(&mut conn).await
    }

    /// Writes run again after a deadlock or serialization failure, since the start.
    pub fn conflicts(&self) -> u64 {
        self.stats.conflicts.load(Ordering::Relaxed)
    }

    /// Jobs written in batches of more than one, since the start.
    pub fn batched(&self) -> u64 {
        self.stats.batched.load(Ordering::Relaxed)
    }

    /// After the database was restored from a backup with PostgreSQL's tools (server
    /// stopped): makes the store safe for the clients that saw newer data, as
    /// `SqliteStore::restore` does — a new store generation, each timeline's head
    /// recorded as its restore point, and message ids continued above any the old
    /// database can have handed out (from `unix_ms × 1000`). Returns the generation.
    pub async fn mark_restored(settings: &PgSettings) -> Result<u64, StoreError> {
        let (pool, described) = schema::pool(settings)?;
        let mut conn = schema::connect(&pool, &described).await?;
        schema::migrate(&mut conn).await?;
        let tx = conn.transaction().await?;
        let generation = (rand::random::<u64>() & ((1 << 52) - 1)) + 1;
        tx.execute(
            "UPDATE meta SET value = $1 WHERE key = 'generation'",
            &[&(generation as i64)],
        )
        .await?;
        tx.batch_execute(
            "DELETE FROM restore_points;
             INSERT INTO restore_points (owner, seq) SELECT uid, head_seq FROM users",
        )
        .await?;
        let floor = (tern_protocol::unix_ms() * 1000) as i64;
        tx.execute(
            "SELECT setval('messages_id_seq', GREATEST((SELECT COALESCE(MAX(id), 0) FROM messages), $1))",
            &[&floor],
        )
        .await?;
        tx.commit().await?;
        Ok(generation)
    }

    /// Where the store is (`host:port/db as user`).
    pub fn describe(&self) -> &str {
        &self.described
    }

    async fn conn(&self) -> Result<Object, StoreError> {
        let started = std::time::Instant::now();
        let c = schema::connect(&self.pool, &self.described).await?;
        metrics::histogram!("tern_store_pool_wait_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("tern_store_pool_waiting").set(self.pool.status().waiting as f64);
        Ok(c)
    }

    /// Queues `op` on the lane of `key` now; the future waits for its commit.
    fn enqueue(&self, key: &str, op: WriteOp) -> StoreFuture<WriteReply> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let lane = &self.lanes[(h.finish() % self.lanes.len() as u64) as usize];
        let (reply, rx) = oneshot::channel();
        let queued = lane.try_send(Job { op, reply });
        Box::pin(async move {
            match queued {
                Ok(()) => rx.await.map_err(|_| StoreError::Closed)?,
                Err(mpsc::error::TrySendError::Full(_)) => Err(StoreError::Busy),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Closed),
            }
        })
    }

    async fn fanout(&self, key: &str, op: WriteOp) -> Result<Vec<Fanout>, StoreError> {
        match self.enqueue(key, op).await? {
            WriteReply::Fanout(f) => Ok(f),
            _ => unreachable!("this job replies Fanout"),
        }
    }

    /// Runs `f` in a transaction of its own on a pooled connection (outbox work).
    async fn with_tx<T>(
        &self,
        f: impl for<'a> FnOnce(&'a Tx<'a>) -> futures_util::future::BoxFuture<'a, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let out = f(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }

    async fn snapshot<T>(
        &self,
        f: impl for<'a> FnOnce(&'a Tx<'a>) -> futures_util::future::BoxFuture<'a, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut c = self.conn().await?;
        let tx = c
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let out = f(&tx).await?;
        tx.commit().await?;
        Ok(out)
    }
}

#[async_trait]
impl Store for PgStore {
    fn store_message(&self, msg: NewMessage) -> StoreFuture<StoredMessage> {
        let key = msg.sender.clone();
        let queued = self.enqueue(&key, WriteOp::Store(msg));
        Box::pin(async move {
            match queued.await? {
                WriteReply::Stored(s) => Ok(s),
                _ => unreachable!("store job replies Stored"),
            }
        })
    }

    async fn timeline(
        &self,
        user: &str,
        after: u64,
        until: u64,
        limit: u32,
    ) -> Result<TimelinePage, StoreError> {
        let user = user.to_owned();
        self.snapshot(move |tx| {
            Box::pin(async move { timeline::read_timeline(tx, &user, after, until, limit).await })
        })
        .await
    }

    async fn summaries(
        &self,
        user: &str,
        last_messages: u32,
        limit: u32,
    ) -> Result<SummaryPage, StoreError> {
        let user = user.to_owned();
        self.snapshot(move |tx| {
            Box::pin(async move { timeline::read_summaries(tx, &user, last_messages, limit).await })
        })
        .await
    }

    async fn ack_delivered(
        &self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> Result<Vec<Fanout>, StoreError> {
        let op = WriteOp::Ack {
            user: user.to_owned(),
            device: device.to_owned(),
            seq,
        };
        self.fanout(user, op).await
    }

    async fn next_send_seq(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        Ok(order::last_send_seq(&c, user, device).await? + 1)
    }

    fn skip_send(&self, user: &str, device: &str, send_seq: u64) -> StoreFuture<()> {
        let queued = self.enqueue(
            user,
            WriteOp::SkipSend {
                user: user.to_owned(),
                device: device.to_owned(),
                send_seq,
            },
        );
        Box::pin(async move { queued.await.map(|_| ()) })
    }

    async fn head_seq(&self, user: &str) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        timeline::head_seq(&c, user).await
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    async fn restore_point(&self, owner: &str) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        timeline::restore_point(&c, owner).await
    }

    async fn record_login(&self, user: &str, device: &str) -> Result<(), StoreError> {
        let op = WriteOp::Login {
            user: user.to_owned(),
            device: device.to_owned(),
        };
        self.enqueue(user, op).await.map(|_| ())
    }

    async fn user_exists(&self, user: &str) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        Ok(
            query_opt(&c, "SELECT 1 FROM users WHERE uid = $1", &[&user])
                .await?
                .is_some(),
        )
    }

    async fn group_op(&self, op: GroupOp, limits: GroupLimits) -> Result<GroupOutcome, StoreError> {
        let key = match &op {
            GroupOp::Create { id, .. } => id.clone(),
            GroupOp::Add { group, .. }
            | GroupOp::Remove { group, .. }
            | GroupOp::Leave { group, .. } => group.clone(),
        };
        match self.enqueue(&key, WriteOp::Group(op, limits)).await? {
            WriteReply::Group(g) => Ok(g),
            _ => unreachable!("group job replies Group"),
        }
    }

    async fn log_member(&self, user: &str, group: &str) -> Result<bool, StoreError> {
        let c = self.conn().await?;
        Ok(groups::is_large(&c, group).await? && groups::is_member(&c, group, user).await?)
    }

    async fn logs(
        &self,
        user: &str,
        last_messages: u32,
    ) -> Result<(Vec<pb::ConversationSummary>, bool), StoreError> {
        let user = user.to_owned();
        self.snapshot(move |tx| {
            Box::pin(async move { marks::logs(tx, &user, last_messages).await })
        })
        .await
    }

    async fn group_info(&self, group: &str) -> Result<Option<pb::GroupInfo>, StoreError> {
        let c = self.conn().await?;
        groups::info(&c, group).await
    }

    async fn groups_of(&self, user: &str) -> Result<Vec<pb::GroupInfo>, StoreError> {
        let c = self.conn().await?;
        groups::of_user(&c, user).await
    }

    async fn mark_read(
        &self,
        user: &str,
        kind: pb::ConversationKind,
        conversation: &str,
        up_to_seq: u64,
        group_receipts_max: usize,
    ) -> Result<Vec<Fanout>, StoreError> {
        let op = WriteOp::MarkRead {
            user: user.to_owned(),
            kind,
            conversation: conversation.to_owned(),
            up_to_seq,
            group_receipts_max,
        };
        self.fanout(user, op).await
    }

    async fn recall(
        &self,
        user: &str,
        server_msg_id: u64,
        window_ms: u64,
    ) -> Result<Vec<Fanout>, StoreError> {
        let op = WriteOp::Recall {
            user: user.to_owned(),
            server_msg_id,
            window_ms,
        };
        self.fanout(user, op).await
    }

    async fn history(
        &self,
        user: &str,
        kind: pb::ConversationKind,
        conversation: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<(Vec<pb::TimelineEntry>, bool), StoreError> {
        let c = self.conn().await?;
        marks::history(&c, user, kind, conversation, before_seq, limit).await
    }

    async fn set_push_token(
        &self,
        user: &str,
        device: &str,
        platform: pb::Platform,
        provider: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        let op = WriteOp::PushToken {
            user: user.to_owned(),
            device: device.to_owned(),
            platform,
            provider: provider.to_owned(),
            token: token.to_owned(),
        };
        self.enqueue(user, op).await.map(|_| ())
    }

    async fn push_target(&self, user: &str) -> Result<PushTarget, StoreError> {
        let c = self.conn().await?;
        outbox::push_target(&c, user).await
    }

    async fn webhook_enqueue(&self, hook: &str, payload: Vec<u8>) -> Result<(), StoreError> {
        let hook = hook.to_owned();
        self.with_tx(move |tx| Box::pin(async move { outbox::enqueue(tx, &hook, &payload).await }))
            .await
    }

    async fn webhooks_due(
        &self,
        hook: &str,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<WebhookJob>, StoreError> {
        let hook = hook.to_owned();
        self.with_tx(move |tx| {
            Box::pin(async move { outbox::claim(tx, &hook, now_ms, limit).await })
        })
        .await
    }

    async fn webhook_done(&self, id: u64) -> Result<(), StoreError> {
        self.with_tx(move |tx| Box::pin(async move { outbox::done(tx, id).await }))
            .await
    }

    async fn webhook_backlog(&self, hook: &str) -> Result<u64, StoreError> {
        let c = self.conn().await?;
        Ok(query_one(
            &c,
            "SELECT COUNT(*) FROM webhook_outbox WHERE hook = $1",
            &[&hook],
        )
        .await?
        .get::<_, i64>(0) as u64)
    }

    async fn webhook_retry(&self, id: u64, next_at_ms: u64) -> Result<(), StoreError> {
        self.with_tx(move |tx| Box::pin(async move { outbox::retry(tx, id, next_at_ms).await }))
            .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Every lane's queue up to now.
        let waits: Vec<_> = self
            .lanes
            .iter()
            .map(|lane| {
                let (reply, rx) = oneshot::channel();
                let queued = lane.try_send(Job {
                    op: WriteOp::Flush,
                    reply,
                });
                async move {
                    queued.map_err(|_| StoreError::Busy)?;
                    rx.await.map_err(|_| StoreError::Closed)?.map(|_| ())
                }
            })
            .collect();
        for w in waits {
            w.await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
