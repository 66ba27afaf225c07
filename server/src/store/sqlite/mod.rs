//! The default store: one SQLite file in WAL mode, embedded in the server process.
//!
//! **Writes** go through one dedicated writer thread. Each call queues a job and waits
//! for its reply; the writer takes every job that is waiting (up to [`MAX_BATCH`]), runs
//! them in *one* transaction (one bad job does not sink the others: the jobs on every
//! message's path refuse before they write, the rest run in their own savepoints; see
//! `writer.rs`), commits, and only then replies. This is group commit: under load
//! one fsync covers hundreds of messages, and when idle a message still commits alone
//! at once. A failed commit replies an error to every job in the batch: nothing in it
//! was acknowledged.
//!
//! **Durability level**: `synchronous=FULL` by default — each commit is fsynced before
//! the ACK, so an acknowledged message survives `kill -9` *and* power loss. `NORMAL`
//! (configurable) survives `kill -9` of the server (the WAL is in the OS page cache) but
//! may lose the last commits on power loss; it is for deployments on battery-backed or
//! replicated disks. See docs/operations.md.
//!
//! **Reads** use a small pool of read-only connections (WAL readers do not block the
//! writer) on tokio's blocking threads.
//!
//! Schema changes are numbered migrations applied in order and recorded in
//! `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tern_protocol::pb;
use tokio::sync::{mpsc, oneshot};

use super::{
    Fanout, GroupLimits, GroupOp, GroupOutcome, NewMessage, PushTarget, Store, StoreError,
    StoreFuture, StoredMessage, SummaryPage, TimelinePage, WebhookJob,
};

mod checkpoint;
mod groups;
mod marks;
mod order;
mod outbox;
#[cfg(test)]
mod plans;
mod schema;
mod timeline;
mod tx;
mod writer;

use super::ops::{WriteOp, WriteReply};
pub use schema::Durability;
use schema::{migrate, open};
use timeline::{head_seq, read_summaries, read_timeline};
use writer::{Job, writer_loop};
pub use writer::{MAX_BATCH, next_batch};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    generation: u64,
    jobs: mpsc::Sender<Job>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) `dir/tern.db`; refuses an empty or
    /// damaged file (see [`SqliteStore::open_with`]).
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        SqliteStore::open_with(dir, durability, false)
    }

    /// Opens `dir/tern.db`: a missing file is created; a 0-byte file is refused unless
    /// `create` (then a new store is made in its place); a file that fails
    /// `PRAGMA quick_check` is refused.
    pub fn open_with(dir: &Path, durability: Durability, create: bool) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("tern.db");
        schema::check_existing(&path, create)?;
        let mut writer = open(&path, durability, false)?;
        migrate(&mut writer)?;
        // WAL checkpoints run on their own thread, not in the writer's commits.
        checkpoint::start(&mut writer, open(&path, durability, false)?)?;
        let generation = schema::generation(&writer)?;
        let readers = (0..4)
            .map(|_| open(&path, durability, true).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (jobs, rx) = mpsc::channel(8192);
        std::thread::Builder::new()
            // tern-bench reads this thread's CPU by its name (bench/src/serverproc.rs).
            .name("tern-store-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| StoreError::Io(format!("spawn writer: {e}")))?;
        Ok(SqliteStore {
            generation,
            jobs,
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
            path,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a consistent copy of the database in `data_dir` to `out` (which must not
    /// exist), while the server may keep running: `VACUUM INTO` reads one snapshot.
    pub fn backup(data_dir: &Path, out: &Path) -> Result<(), StoreError> {
        let conn = Connection::open_with_flags(
            data_dir.join("tern.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.prepare_cached("VACUUM INTO ?1")?
            .execute(params![out.to_string_lossy()])?;
        Ok(())
    }

    /// Replaces the database in `data_dir` (the server must be stopped) with the backup
    /// `from`, and makes it safe for the clients that saw the newer data: a new store
    /// generation, each timeline's head recorded as its restore point, and server
    /// message ids continued above any the old store can have handed out (from
    /// `unix_ms × 1000`), so no id is given to two messages. The replaced files are
    /// kept beside it (`tern.db.replaced-<unix time>`). Returns the new generation.
    pub fn restore(data_dir: &Path, from: &Path) -> Result<u64, StoreError> {
        schema::quick_check(from)?;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Io(format!("create {}: {e}", data_dir.display())))?;
        let path = data_dir.join("tern.db");
        let stamp = tern_protocol::unix_ms() / 1000;
        for suffix in ["", "-wal", "-shm"] {
            let file = data_dir.join(format!("tern.db{suffix}"));
            if file.exists() {
                let aside = data_dir.join(format!("tern.db{suffix}.replaced-{stamp}"));
                std::fs::rename(&file, &aside)
                    .map_err(|e| StoreError::Io(format!("move {} aside: {e}", file.display())))?;
            }
        }
        std::fs::copy(from, &path).map_err(|e| {
            StoreError::Io(format!(
                "copy {} to {}: {e}",
                from.display(),
                path.display()
            ))
        })?;
        let mut conn = open(&path, Durability::Full, false)?;
        migrate(&mut conn)?;
        let tx = conn.transaction()?;
        let generation = (rand::random::<u64>() & ((1 << 52) - 1)) + 1;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'generation'",
            params![generation as i64],
        )?;
        tx.execute("DELETE FROM restore_points", [])?;
        tx.execute(
            "INSERT INTO restore_points (owner, seq) SELECT user, head_seq FROM users",
            [],
        )?;
        // A marker row at the id floor (in no timeline): SQLite continues after it.
        let max_id: i64 = tx.query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |r| {
            r.get(0)
        })?;
        let now = tern_protocol::unix_ms();
        let floor = (max_id + 1).max((now * 1000) as i64);
        tx.execute(
            "INSERT INTO messages (id, sender, client_msg_id, recipient, kind, content_type, body, client_ts, server_ts, sender_seq)
             VALUES (?1, '#restore', randomblob(16), '#restore', 2, 0, x'', 0, ?2, 0)",
            params![floor, now as i64],
        )?;
        tx.commit()?;
        Ok(generation)
    }

    /// Queues `op` now; the returned future waits for its commit.
    fn enqueue(&self, op: WriteOp) -> StoreFuture<WriteReply> {
        let (reply, rx) = oneshot::channel();
        let queued = self.jobs.try_send(Job { op, reply });
        Box::pin(async move {
            match queued {
                Ok(()) => rx.await.map_err(|_| StoreError::Closed)?,
                Err(mpsc::error::TrySendError::Full(_)) => Err(StoreError::Busy),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(StoreError::Closed),
            }
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteReply, StoreError> {
        self.enqueue(op).await
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = self.readers.clone();
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        tokio::task::spawn_blocking(move || {
            let conn = readers[i].lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn store_message(&self, msg: NewMessage) -> StoreFuture<StoredMessage> {
        let queued = self.enqueue(WriteOp::Store(msg));
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
        self.read(move |c| read_timeline(c, &user, after, until, limit))
            .await
    }

    async fn summaries(
        &self,
        user: &str,
        last_messages: u32,
        limit: u32,
    ) -> Result<SummaryPage, StoreError> {
        let user = user.to_owned();
        self.read(move |c| {
            // One snapshot: the unread counts are the server's count *at* `head_seq`,
            // which clients use as the position of the count (see the client store).
            let tx = c.unchecked_transaction()?;
            read_summaries(&tx, &user, last_messages, limit)
        })
        .await
    }

    async fn ack_delivered(
        &self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> Result<Vec<Fanout>, StoreError> {
        match self
            .write(WriteOp::Ack {
                user: user.to_owned(),
                device: device.to_owned(),
                seq,
            })
            .await?
        {
            WriteReply::Fanout(f) => Ok(f),
            _ => unreachable!("ack job replies Fanout"),
        }
    }

    async fn next_send_seq(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        let (user, device) = (user.to_owned(), device.to_owned());
        self.read(move |c| Ok(order::last_send_seq(c, &user, &device)? + 1))
            .await
    }

    fn skip_send(&self, user: &str, device: &str, send_seq: u64) -> StoreFuture<()> {
        let queued = self.enqueue(WriteOp::SkipSend {
            user: user.to_owned(),
            device: device.to_owned(),
            send_seq,
        });
        Box::pin(async move { queued.await.map(|_| ()) })
    }

    async fn head_seq(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.read(move |c| head_seq(c, &user)).await
    }

    fn generation(&self) -> u64 {
        self.generation
    }

    async fn restore_point(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_owned();
        self.read(move |c| timeline::restore_point(c, &owner)).await
    }

    async fn record_login(&self, user: &str, device: &str) -> Result<(), StoreError> {
        self.write(WriteOp::Login {
            user: user.to_owned(),
            device: device.to_owned(),
        })
        .await
        .map(|_| ())
    }

    async fn user_exists(&self, user: &str) -> Result<bool, StoreError> {
        let user = user.to_owned();
        self.read(move |c| {
            Ok(c.prepare_cached("SELECT 1 FROM users WHERE user = ?1")?
                .query_row(params![user], |_| Ok(()))
                .optional()?
                .is_some())
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        self.write(WriteOp::Flush).await.map(|_| ())
    }

    async fn group_op(&self, op: GroupOp, limits: GroupLimits) -> Result<GroupOutcome, StoreError> {
        match self.write(WriteOp::Group(op, limits)).await? {
            WriteReply::Group(g) => Ok(g),
            _ => unreachable!("group job replies Group"),
        }
    }

    async fn log_member(&self, user: &str, group: &str) -> Result<bool, StoreError> {
        let (user, group) = (user.to_owned(), group.to_owned());
        self.read(move |c| Ok(groups::is_large(c, &group)? && groups::is_member(c, &group, &user)?))
            .await
    }

    async fn logs(
        &self,
        user: &str,
        last_messages: u32,
    ) -> Result<(Vec<pb::ConversationSummary>, bool), StoreError> {
        let user = user.to_owned();
        self.read(move |c| {
            let tx = c.unchecked_transaction()?;
            marks::logs(&tx, &user, last_messages)
        })
        .await
    }

    async fn group_info(&self, group: &str) -> Result<Option<pb::GroupInfo>, StoreError> {
        let group = group.to_owned();
        self.read(move |c| groups::info(c, &group)).await
    }

    async fn groups_of(&self, user: &str) -> Result<Vec<pb::GroupInfo>, StoreError> {
        let user = user.to_owned();
        self.read(move |c| groups::of_user(c, &user)).await
    }

    async fn mark_read(
        &self,
        user: &str,
        kind: pb::ConversationKind,
        conversation: &str,
        up_to_seq: u64,
        group_receipts_max: usize,
    ) -> Result<Vec<Fanout>, StoreError> {
        match self
            .write(WriteOp::MarkRead {
                user: user.to_owned(),
                kind,
                conversation: conversation.to_owned(),
                up_to_seq,
                group_receipts_max,
            })
            .await?
        {
            WriteReply::Fanout(f) => Ok(f),
            _ => unreachable!("mark_read replies Fanout"),
        }
    }

    async fn recall(
        &self,
        user: &str,
        server_msg_id: u64,
        window_ms: u64,
    ) -> Result<Vec<Fanout>, StoreError> {
        match self
            .write(WriteOp::Recall {
                user: user.to_owned(),
                server_msg_id,
                window_ms,
            })
            .await?
        {
            WriteReply::Fanout(f) => Ok(f),
            _ => unreachable!("recall replies Fanout"),
        }
    }

    async fn history(
        &self,
        user: &str,
        kind: pb::ConversationKind,
        conversation: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<(Vec<pb::TimelineEntry>, bool), StoreError> {
        let (user, conversation) = (user.to_owned(), conversation.to_owned());
        self.read(move |c| marks::history(c, &user, kind, &conversation, before_seq, limit))
            .await
    }

    async fn set_push_token(
        &self,
        user: &str,
        device: &str,
        platform: pb::Platform,
        provider: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        self.write(WriteOp::PushToken {
            user: user.to_owned(),
            device: device.to_owned(),
            platform,
            provider: provider.to_owned(),
            token: token.to_owned(),
        })
        .await
        .map(|_| ())
    }

    async fn push_target(&self, user: &str) -> Result<PushTarget, StoreError> {
        let user = user.to_owned();
        self.read(move |c| outbox::push_target(c, &user)).await
    }

    async fn webhook_enqueue(&self, hook: &str, payload: Vec<u8>) -> Result<(), StoreError> {
        self.write(WriteOp::WebhookEnqueue(hook.to_owned(), payload))
            .await
            .map(|_| ())
    }

    async fn webhooks_due(
        &self,
        hook: &str,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<WebhookJob>, StoreError> {
        let hook = hook.to_owned();
        self.read(move |c| outbox::due(c, &hook, now_ms, limit))
            .await
    }

    async fn webhook_done(&self, id: u64) -> Result<(), StoreError> {
        self.write(WriteOp::WebhookDone(id)).await.map(|_| ())
    }

    async fn webhook_backlog(&self, hook: &str) -> Result<u64, StoreError> {
        let hook = hook.to_owned();
        self.read(move |c| {
            Ok(
                c.prepare_cached("SELECT COUNT(*) FROM webhook_outbox WHERE hook = ?1")?
                    .query_row(params![hook], |r| r.get::<_, i64>(0))? as u64,
            )
        })
        .await
    }

    async fn webhook_retry(&self, id: u64, next_at_ms: u64) -> Result<(), StoreError> {
        self.write(WriteOp::WebhookRetry(id, next_at_ms))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests;
