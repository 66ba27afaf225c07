//! The default store: one SQLite file in WAL mode, embedded in the server process.
//!
//! **Writes** go through one dedicated writer thread. Each call queues a job and waits
//! for its reply; the writer takes every job that is waiting (up to [`MAX_BATCH`]), runs
//! them in *one* transaction (each inside its own savepoint, so one bad job does not
//! sink the others), commits, and only then replies. This is group commit: under load
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
use std::time::Instant;

use async_trait::async_trait;
use prost::Message as _;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tern_protocol::pb;
use tokio::sync::{mpsc, oneshot};

use super::{
    Fanout, GroupLimits, GroupOp, GroupOutcome, NewMessage, PushTarget, Store, StoreError,
    StoreFuture, StoredMessage, SummaryPage, TimelinePage, WebhookJob, log_key,
};

mod groups;
mod marks;
mod outbox;

/// Most jobs committed in one transaction.
pub const MAX_BATCH: usize = 512;

/// How hard a commit is pushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// fsync on every commit: survives process kill and power loss.
    #[default]
    Full,
    /// fsync at WAL checkpoints: survives process kill, not power loss.
    Normal,
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!(
                "durability must be 'full' or 'normal', not '{other}'"
            )),
        }
    }
}

const MIGRATIONS: &[&str] = &[
    // 1: messages, timelines, per-user heads, conversations, device cursors.
    "CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,
        client_msg_id BLOB NOT NULL,
        recipient TEXT NOT NULL,
        kind INTEGER NOT NULL,
        content_type INTEGER NOT NULL,
        body BLOB NOT NULL,
        client_ts INTEGER NOT NULL,
        server_ts INTEGER NOT NULL,
        sender_seq INTEGER NOT NULL,
        UNIQUE (sender, client_msg_id)
    );
    CREATE TABLE timeline (
        user TEXT NOT NULL,
        seq INTEGER NOT NULL,
        conv_kind INTEGER NOT NULL,
        conversation TEXT NOT NULL,
        message_id INTEGER,
        receipt BLOB,
        PRIMARY KEY (user, seq)
    ) WITHOUT ROWID;
    CREATE INDEX timeline_by_conversation ON timeline (user, conv_kind, conversation, seq);
    CREATE TABLE users (
        user TEXT PRIMARY KEY,
        head_seq INTEGER NOT NULL DEFAULT 0,
        delivered_seq INTEGER NOT NULL DEFAULT 0,
        last_login_ms INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE conversations (
        user TEXT NOT NULL,
        conv_kind INTEGER NOT NULL,
        conversation TEXT NOT NULL,
        latest_seq INTEGER NOT NULL,
        unread INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user, conv_kind, conversation)
    ) WITHOUT ROWID;
    CREATE INDEX conversations_by_activity ON conversations (user, latest_seq);
    CREATE TABLE devices (
        user TEXT NOT NULL,
        device TEXT NOT NULL,
        delivered_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user, device)
    ) WITHOUT ROWID;",
    // 2: groups, read marks, recall, push tokens, the webhook outbox. `timeline.event`
    // holds an encoded TimelineEntry body for entries that are neither a message nor a
    // receipt (recalls, group events).
    "ALTER TABLE timeline ADD COLUMN event BLOB;
    ALTER TABLE messages ADD COLUMN recalled INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE groups (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        owner TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE group_members (
        grp TEXT NOT NULL,
        user TEXT NOT NULL,
        joined INTEGER NOT NULL,
        PRIMARY KEY (grp, user)
    ) WITHOUT ROWID;
    CREATE INDEX group_members_by_user ON group_members (user);
    CREATE TABLE read_marks (
        user TEXT NOT NULL,
        conv_kind INTEGER NOT NULL,
        conversation TEXT NOT NULL,
        up_to_seq INTEGER NOT NULL,
        PRIMARY KEY (user, conv_kind, conversation)
    ) WITHOUT ROWID;
    CREATE TABLE push_tokens (
        user TEXT NOT NULL,
        device TEXT NOT NULL,
        platform INTEGER NOT NULL,
        provider TEXT NOT NULL,
        token TEXT NOT NULL,
        PRIMARY KEY (user, device)
    ) WITHOUT ROWID;
    CREATE TABLE webhook_outbox (
        id INTEGER PRIMARY KEY,
        hook TEXT NOT NULL,
        payload BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at_ms INTEGER NOT NULL
    );
    CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at_ms);",
    // 3: large groups keep one log (the timeline of the pseudo-user `#<group>`) instead
    // of an entry per member.
    "ALTER TABLE groups ADD COLUMN large INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE log_joins (
        grp TEXT NOT NULL,
        user TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (grp, user)
    ) WITHOUT ROWID;",
];

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: usize = conn
        .prepare_cached("PRAGMA user_version")?
        .query_row([], |r| r.get::<_, i64>(0))? as usize;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        tracing::info!(migration = i + 1, "applied store migration");
    }
    Ok(())
}

fn open(path: &Path, durability: Durability, read_only: bool) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Every statement on the hot paths is prepared once and reused: parsing SQL was a
    // fifth of the writer thread's time under load.
    conn.set_prepared_statement_cache_capacity(64);
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync)?;
    if read_only {
        conn.pragma_update(None, "query_only", true)?;
    } else {
        // A group message writes one timeline entry per member in one transaction;
        // with SQLite's default 2 MiB cache the dirty pages spill mid-transaction.
        conn.pragma_update(None, "cache_size", -65536)?; // KiB: 64 MiB
    }
    Ok(conn)
}

enum WriteOp {
    Store(NewMessage),
    Ack {
        user: String,
        device: String,
        seq: u64,
    },
    Login {
        user: String,
        device: String,
    },
    Flush,
    Group(GroupOp, GroupLimits),
    MarkRead {
        user: String,
        kind: pb::ConversationKind,
        conversation: String,
        up_to_seq: u64,
        group_receipts_max: usize,
    },
    Recall {
        user: String,
        server_msg_id: u64,
        window_ms: u64,
    },
    PushToken {
        user: String,
        device: String,
        platform: pb::Platform,
        provider: String,
        token: String,
    },
    WebhookEnqueue(String, Vec<u8>),
    WebhookDone(u64),
    WebhookRetry(u64, u64),
}

enum WriteReply {
    Stored(StoredMessage),
    Fanout(Vec<Fanout>),
    Group(GroupOutcome),
    Done,
}

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) `dir/tern.db`.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Corrupt(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("tern.db");
        let mut writer = open(&path, durability, false)?;
        migrate(&mut writer)?;
        let readers = (0..4)
            .map(|_| open(&path, durability, true).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        let (jobs, rx) = mpsc::channel(8192);
        std::thread::Builder::new()
            .name("tern-store-writer".into())
            .spawn(move || writer_loop(writer, rx))
            .map_err(|e| StoreError::Corrupt(format!("spawn writer: {e}")))?;
        Ok(SqliteStore {
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

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Job>) {
    let mut last_ts = 0u64;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
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
                    if let Err(e) = &r {
                        tracing::error!(error = %e, "store job failed");
                    }
                    let _ = job.reply.send(r);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = batch.len(), "store commit failed; nothing in the batch was acknowledged");
                metrics::counter!("tern_store_commit_failures_total").increment(1);
                let msg = e.to_string();
                for job in batch {
                    let _ = job
                        .reply
                        .send(Err(StoreError::Corrupt(format!("commit failed: {msg}"))));
                }
            }
        }
    }
    tracing::info!("store writer stopped");
}

fn next_seq(tx: &Transaction<'_>, user: &str) -> Result<u64, StoreError> {
    let seq: i64 = tx
        .prepare_cached(
            "INSERT INTO users (user, head_seq) VALUES (?1, 1)
         ON CONFLICT (user) DO UPDATE SET head_seq = head_seq + 1
         RETURNING head_seq",
        )?
        .query_row(params![user], |r| r.get(0))?;
    Ok(seq as u64)
}

fn head_seq(conn: &Connection, user: &str) -> Result<u64, StoreError> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT head_seq FROM users WHERE user = ?1")?
        .query_row(params![user], |r| r.get(0))
        .optional()?;
    Ok(seq.unwrap_or(0) as u64)
}

/// Appends an entry that is neither a message nor a receipt (a recall, a group event)
/// to `user`'s timeline and returns it.
fn append_event(
    tx: &Transaction<'_>,
    user: &str,
    kind: i32,
    conversation: &str,
    body: pb::timeline_entry::Body,
) -> Result<Fanout, StoreError> {
    let seq = next_seq(tx, user)?;
    insert_event(tx, user, seq, kind, conversation, body)
}

/// Writes an event entry at a seq already taken with [`next_seq`] (for an event that
/// must carry its own position).
fn insert_event(
    tx: &Transaction<'_>,
    user: &str,
    seq: u64,
    kind: i32,
    conversation: &str,
    body: pb::timeline_entry::Body,
) -> Result<Fanout, StoreError> {
    let mut entry = pb::TimelineEntry {
        seq: 0,
        body: Some(body),
    };
    tx.prepare_cached("INSERT INTO timeline (user, seq, conv_kind, conversation, event) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![user, seq as i64, kind, conversation, entry.encode_to_vec()])?;
    entry.seq = seq;
    Ok(Fanout {
        user: user.to_owned(),
        entry,
        log: None,
    })
}

/// Appends a receipt to `user`'s timeline and returns it.
fn append_receipt(
    tx: &Transaction<'_>,
    user: &str,
    receipt: pb::Receipt,
) -> Result<Fanout, StoreError> {
    let seq = next_seq(tx, user)?;
    append_entry(
        tx,
        user,
        seq,
        receipt.kind,
        &receipt.conversation,
        None,
        Some(&receipt.encode_to_vec()),
        0,
    )?;
    Ok(Fanout {
        user: user.to_owned(),
        log: None,
        entry: pb::TimelineEntry {
            seq,
            body: Some(pb::timeline_entry::Body::Receipt(receipt)),
        },
    })
}

#[allow(clippy::too_many_arguments)]
fn append_entry(
    tx: &Transaction<'_>,
    user: &str,
    seq: u64,
    kind: i32,
    conversation: &str,
    message_id: Option<u64>,
    receipt: Option<&[u8]>,
    unread: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO timeline (user, seq, conv_kind, conversation, message_id, receipt) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?
.execute(params![user, seq as i64, kind, conversation, message_id.map(|i| i as i64), receipt],
    )?;
    if message_id.is_some() {
        tx.prepare_cached("INSERT INTO conversations (user, conv_kind, conversation, latest_seq, unread) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (user, conv_kind, conversation)
             DO UPDATE SET latest_seq = excluded.latest_seq, unread = unread + excluded.unread")?
.execute(params![user, kind, conversation, seq as i64, unread as i64],
        )?;
    }
    Ok(())
}

fn apply(tx: &Transaction<'_>, op: &WriteOp, last_ts: &mut u64) -> Result<WriteReply, StoreError> {
    match op {
        WriteOp::Store(m) => store_message(tx, m, last_ts).map(WriteReply::Stored),
        WriteOp::Ack { user, device, seq } => {
            ack_delivered(tx, user, device, *seq).map(WriteReply::Fanout)
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
    }
}

fn store_message(
    tx: &Transaction<'_>,
    m: &NewMessage,
    last_ts: &mut u64,
) -> Result<StoredMessage, StoreError> {
    let existing: Option<(i64, i64, i64, i32, String)> = tx
        .prepare_cached("SELECT id, sender_seq, server_ts, kind, recipient FROM messages WHERE sender = ?1 AND client_msg_id = ?2")?
.query_row(params![m.sender, &m.client_msg_id.0[..]],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()?;
    if let Some((id, seq, ts, kind, recipient)) = existing {
        // For a large group's message `sender_seq` holds its seq in the group's log.
        let in_log =
            kind == pb::ConversationKind::Group as i32 && groups::is_large(tx, &recipient)?;
        return Ok(StoredMessage {
            server_msg_id: id as u64,
            sender_seq: if in_log { 0 } else { seq as u64 },
            log_seq: if in_log { seq as u64 } else { 0 },
            server_ts_ms: ts as u64,
            duplicate: true,
            fanout: vec![],
        });
    }
    let to_group = m.kind == pb::ConversationKind::Group;
    let large = to_group && groups::is_large(tx, &m.recipient)?;
    if to_group {
        // Membership is checked inside the write, so it is ordered with every
        // membership change: a member removed before this send cannot send into it.
        if !groups::exists(tx, &m.recipient)? {
            return Err(StoreError::GroupNotFound);
        }
        if !m.from_backend && !groups::is_member(tx, &m.recipient, &m.sender)? {
            return Err(StoreError::NotAllowed("not a member of the group"));
        }
    }
    if m.require_known_recipient && !to_group {
        let known = tx
            .prepare_cached("SELECT 1 FROM users WHERE user = ?1")?
            .query_row(params![m.recipient], |_| Ok(()))
            .optional()?;
        if known.is_none() {
            return Err(StoreError::UnknownRecipient);
        }
    }
    let ts = tern_protocol::unix_ms().max(*last_ts);
    *last_ts = ts;
    let kind = m.kind as i32;
    // A large group's message goes to the group's log only (read diffusion); the seq
    // column keeps its log seq. Otherwise the sender's timeline gets the first entry.
    let sender_seq = if large {
        next_seq(tx, &log_key(&m.recipient))?
    } else {
        next_seq(tx, &m.sender)?
    };
    tx.prepare_cached("INSERT INTO messages (sender, client_msg_id, recipient, kind, content_type, body, client_ts, server_ts, sender_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")?
.execute(params![
            m.sender,
            &m.client_msg_id.0[..],
            m.recipient,
            kind,
            m.content_type,
            &m.body[..],
            m.client_ts_ms as i64,
            ts as i64,
            sender_seq as i64
        ],
    )?;
    let id = tx.last_insert_rowid() as u64;
    let stored = pb::StoredMessage {
        server_msg_id: id,
        client_msg_id: bytes::Bytes::copy_from_slice(&m.client_msg_id.0),
        sender: m.sender.clone(),
        recipient: m.recipient.clone(),
        kind,
        content_type: m.content_type,
        body: m.body.clone(),
        client_ts_ms: m.client_ts_ms,
        server_ts_ms: ts,
        recalled: false,
    };
    if m.to_service {
        outbox::enqueue(tx, "c2s", &outbox::c2s_payload(&stored))?;
    }
    let entry = |seq| pb::TimelineEntry {
        seq,
        body: Some(pb::timeline_entry::Body::Message(stored.clone())),
    };
    if large {
        tx.prepare_cached(
            "INSERT INTO timeline (user, seq, conv_kind, conversation, message_id) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![log_key(&m.recipient), sender_seq as i64, kind, m.recipient, id as i64])?;
        return Ok(StoredMessage {
            server_msg_id: id,
            sender_seq: 0,
            log_seq: sender_seq,
            server_ts_ms: ts,
            duplicate: false,
            fanout: vec![groups::log_fanout(&m.recipient, entry(sender_seq))],
        });
    }
    append_entry(
        tx,
        &m.sender,
        sender_seq,
        kind,
        &m.recipient,
        Some(id),
        None,
        0,
    )?;
    let mut fanout = vec![Fanout {
        user: m.sender.clone(),
        entry: entry(sender_seq),
        log: None,
    }];
    if to_group {
        // Write diffusion: one entry in every member's timeline (the message row is
        // shared); the conversation is the group for everyone. Three set statements
        // (next seqs, entries, conversation rows) rather than three per member: the
        // per-row round trips through the SQLite API were most of a big group's cost.
        let seqs: Vec<(String, i64)> = tx
            .prepare_cached(
                "INSERT INTO users (user, head_seq)
                 SELECT user, 1 FROM group_members WHERE grp = ?1 AND user != ?2
                 ON CONFLICT (user) DO UPDATE SET head_seq = head_seq + 1
                 RETURNING user, head_seq",
            )?
            .query_map(params![m.recipient, m.sender], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        tx.prepare_cached(
            "INSERT INTO timeline (user, seq, conv_kind, conversation, message_id)
             SELECT gm.user, u.head_seq, ?3, ?1, ?4 FROM group_members gm JOIN users u ON u.user = gm.user
             WHERE gm.grp = ?1 AND gm.user != ?2",
        )?
        .execute(params![m.recipient, m.sender, kind, id as i64])?;
        tx.prepare_cached(
            "INSERT INTO conversations (user, conv_kind, conversation, latest_seq, unread)
             SELECT gm.user, ?3, ?1, u.head_seq, 1 FROM group_members gm JOIN users u ON u.user = gm.user
             WHERE gm.grp = ?1 AND gm.user != ?2
             ON CONFLICT (user, conv_kind, conversation)
             DO UPDATE SET latest_seq = excluded.latest_seq, unread = unread + 1",
        )?
        .execute(params![m.recipient, m.sender, kind])?;
        fanout.extend(seqs.into_iter().map(|(user, seq)| Fanout {
            user,
            entry: entry(seq as u64),
            log: None,
        }));
    } else if m.recipient != m.sender {
        let seq = next_seq(tx, &m.recipient)?;
        append_entry(tx, &m.recipient, seq, kind, &m.sender, Some(id), None, 1)?;
        fanout.push(Fanout {
            user: m.recipient.clone(),
            entry: entry(seq),
            log: None,
        });
    }
    Ok(StoredMessage {
        server_msg_id: id,
        sender_seq,
        log_seq: 0,
        server_ts_ms: ts,
        duplicate: false,
        fanout,
    })
}

fn ack_delivered(
    tx: &Transaction<'_>,
    user: &str,
    device: &str,
    seq: u64,
) -> Result<Vec<Fanout>, StoreError> {
    let seq = seq.min(head_seq(tx, user)?);
    let device_seq: i64 = tx
        .prepare_cached("SELECT delivered_seq FROM devices WHERE user = ?1 AND device = ?2")?
        .query_row(params![user, device], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    if seq <= device_seq as u64 {
        return Ok(vec![]);
    }
    tx.prepare_cached(
        "INSERT INTO devices (user, device, delivered_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (user, device) DO UPDATE SET delivered_seq = excluded.delivered_seq",
    )?
    .execute(params![user, device, seq as i64])?;
    // Receipts only for what no device of this user had acknowledged before.
    let user_seq: i64 = tx
        .prepare_cached("SELECT delivered_seq FROM users WHERE user = ?1")?
        .query_row(params![user], |r| r.get(0))?;
    if seq <= user_seq as u64 {
        return Ok(vec![]);
    }
    tx.prepare_cached("UPDATE users SET delivered_seq = ?2 WHERE user = ?1")?
        .execute(params![user, seq as i64])?;
    let mut stmt = tx.prepare_cached(
        "SELECT m.sender, MAX(m.id) FROM timeline t JOIN messages m ON m.id = t.message_id
         WHERE t.user = ?1 AND t.seq > ?2 AND t.seq <= ?3 AND t.conv_kind = ?4 AND m.sender != ?1
         GROUP BY m.sender",
    )?;
    let senders: Vec<(String, i64)> = stmt
        .query_map(
            params![
                user,
                user_seq,
                seq as i64,
                pb::ConversationKind::Direct as i32
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?
        .collect::<Result<_, _>>()?;
    let mut fanout = vec![];
    for (sender, up_to) in senders {
        let receipt = pb::Receipt {
            status: pb::receipt::Status::Delivered as i32,
            kind: pb::ConversationKind::Direct as i32,
            conversation: user.to_owned(),
            by_user: user.to_owned(),
            up_to_server_msg_id: up_to as u64,
            ..Default::default()
        };
        fanout.push(append_receipt(tx, &sender, receipt)?);
    }
    Ok(fanout)
}

const ENTRY_COLUMNS: &str =
    "t.seq, t.receipt, m.id, m.client_msg_id, m.sender, m.recipient, m.kind, m.content_type,
     m.body, m.client_ts, m.server_ts, t.event, m.recalled";

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<pb::TimelineEntry, StoreError>> {
    let seq: i64 = r.get(0)?;
    let receipt: Option<Vec<u8>> = r.get(1)?;
    if let Some(event) = r.get::<_, Option<Vec<u8>>>(11)? {
        return Ok(match pb::TimelineEntry::decode(&event[..]) {
            Ok(e) => Ok(pb::TimelineEntry {
                seq: seq as u64,
                body: e.body,
            }),
            Err(e) => Err(StoreError::Corrupt(format!("event at seq {seq}: {e}"))),
        });
    }
    let body = match receipt {
        Some(bytes) => match pb::Receipt::decode(&bytes[..]) {
            Ok(rc) => pb::timeline_entry::Body::Receipt(rc),
            Err(e) => {
                return Ok(Err(StoreError::Corrupt(format!(
                    "receipt at seq {seq}: {e}"
                ))));
            }
        },
        None => pb::timeline_entry::Body::Message(pb::StoredMessage {
            server_msg_id: r.get::<_, i64>(2)? as u64,
            client_msg_id: r.get::<_, Vec<u8>>(3)?.into(),
            sender: r.get(4)?,
            recipient: r.get(5)?,
            kind: r.get(6)?,
            content_type: r.get(7)?,
            body: r.get::<_, Vec<u8>>(8)?.into(),
            client_ts_ms: r.get::<_, i64>(9)? as u64,
            server_ts_ms: r.get::<_, i64>(10)? as u64,
            recalled: r.get(12)?,
        }),
    };
    Ok(Ok(pb::TimelineEntry {
        seq: seq as u64,
        body: Some(body),
    }))
}

fn read_timeline(
    conn: &Connection,
    user: &str,
    after: u64,
    until: u64,
    limit: u32,
) -> Result<TimelinePage, StoreError> {
    let head = head_seq(conn, user)?;
    let upper = if until == 0 { head } else { until.min(head) };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM timeline t LEFT JOIN messages m ON m.id = t.message_id
         WHERE t.user = ?1 AND t.seq > ?2 AND t.seq <= ?3 ORDER BY t.seq LIMIT ?4"
    ))?;
    let entries = stmt
        .query_map(
            params![user, after as i64, upper as i64, limit as i64],
            row_to_entry,
        )?
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    let last = entries.last().map_or(after, |e| e.seq);
    Ok(TimelinePage {
        more: last < upper,
        entries,
        head_seq: head,
    })
}

fn read_summaries(
    conn: &Connection,
    user: &str,
    last_messages: u32,
    limit: u32,
) -> Result<SummaryPage, StoreError> {
    let head = head_seq(conn, user)?;
    let mut stmt = conn.prepare_cached(
        "SELECT conv_kind, conversation, latest_seq, unread FROM conversations
         WHERE user = ?1 ORDER BY latest_seq DESC LIMIT ?2",
    )?;
    let rows: Vec<(i32, String, i64, i64)> = stmt
        .query_map(params![user, limit as i64 + 1], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let more = rows.len() > limit as usize;
    let mut last_stmt = conn.prepare_cached(&format!(
        "SELECT {ENTRY_COLUMNS} FROM timeline t JOIN messages m ON m.id = t.message_id
         WHERE t.user = ?1 AND t.conv_kind = ?2 AND t.conversation = ?3 ORDER BY t.seq DESC LIMIT ?4"
    ))?;
    let mut conversations = Vec::with_capacity(rows.len().min(limit as usize));
    for (kind, conversation, latest_seq, unread) in rows.into_iter().take(limit as usize) {
        let mut last = last_stmt
            .query_map(
                params![user, kind, conversation, last_messages as i64],
                row_to_entry,
            )?
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        last.reverse();
        conversations.push(pb::ConversationSummary {
            kind,
            conversation,
            unread: unread as u64,
            latest_seq: latest_seq as u64,
            last,
            log: String::new(),
            ..Default::default()
        });
    }
    Ok(SummaryPage {
        conversations,
        more,
        head_seq: head,
    })
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

    async fn head_seq(&self, user: &str) -> Result<u64, StoreError> {
        let user = user.to_owned();
        self.read(move |c| head_seq(c, &user)).await
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
    ) -> Result<Vec<pb::ConversationSummary>, StoreError> {
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

    async fn webhooks_due(&self, now_ms: u64, limit: u32) -> Result<Vec<WebhookJob>, StoreError> {
        self.read(move |c| outbox::due(c, now_ms, limit)).await
    }

    async fn webhook_done(&self, id: u64) -> Result<(), StoreError> {
        self.write(WriteOp::WebhookDone(id)).await.map(|_| ())
    }

    async fn webhook_retry(&self, id: u64, next_at_ms: u64) -> Result<(), StoreError> {
        self.write(WriteOp::WebhookRetry(id, next_at_ms))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::ClientMsgId;

    fn msg(from: &str, to: &str, n: u8) -> NewMessage {
        NewMessage {
            sender: from.into(),
            client_msg_id: ClientMsgId([n; 16]),
            recipient: to.into(),
            kind: pb::ConversationKind::Direct,
            content_type: 0,
            body: bytes::Bytes::from(format!("hello {n}")),
            client_ts_ms: 1,
            require_known_recipient: false,
            to_service: false,
            from_backend: false,
        }
    }

    #[tokio::test]
    async fn store_is_idempotent_and_assigns_contiguous_seqs() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Full).unwrap();
        let a = store.store_message(msg("alice", "bob", 1)).await.unwrap();
        assert!(!a.duplicate);
        assert_eq!(a.sender_seq, 1);
        assert_eq!(
            a.fanout
                .iter()
                .map(|f| (f.user.as_str(), f.entry.seq))
                .collect::<Vec<_>>(),
            vec![("alice", 1), ("bob", 1)]
        );
        let again = store.store_message(msg("alice", "bob", 1)).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(
            (again.server_msg_id, again.sender_seq),
            (a.server_msg_id, a.sender_seq)
        );
        assert!(again.fanout.is_empty());
        // Same client id from another sender is a different message.
        let c = store.store_message(msg("carol", "bob", 1)).await.unwrap();
        assert!(!c.duplicate);
        assert_eq!(store.head_seq("bob").await.unwrap(), 2);

        let page = store.timeline("bob", 0, 0, 1).await.unwrap();
        assert_eq!((page.entries.len(), page.more, page.head_seq), (1, true, 2));
        let page = store.timeline("bob", 1, 0, 10).await.unwrap();
        assert_eq!((page.entries[0].seq, page.more), (2, false));

        let sums = store.summaries("bob", 5, 10).await.unwrap();
        assert_eq!(sums.conversations.len(), 2);
        assert_eq!(
            sums.conversations[0].conversation, "carol",
            "most recent first"
        );
        assert_eq!(sums.conversations[0].unread, 1);
        let alice_view = store.summaries("alice", 5, 10).await.unwrap();
        assert_eq!(
            alice_view.conversations[0].unread, 0,
            "own messages are not unread"
        );
    }

    #[tokio::test]
    async fn delivery_ack_produces_one_receipt_per_sender_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        for n in 1..=3 {
            store.store_message(msg("alice", "bob", n)).await.unwrap();
        }
        let last = store.store_message(msg("carol", "bob", 9)).await.unwrap();
        let fan = store.ack_delivered("bob", "phone", 4).await.unwrap();
        let users: Vec<&str> = fan.iter().map(|f| f.user.as_str()).collect();
        assert_eq!(users, vec!["alice", "carol"]);
        match &fan[1].entry.body {
            Some(pb::timeline_entry::Body::Receipt(r)) => {
                assert_eq!(r.up_to_server_msg_id, last.server_msg_id);
                assert_eq!(r.by_user, "bob");
            }
            other => panic!("expected a receipt, got {other:?}"),
        }
        assert!(
            store
                .ack_delivered("bob", "phone", 4)
                .await
                .unwrap()
                .is_empty(),
            "repeat ack is a no-op"
        );
        assert!(
            store
                .ack_delivered("bob", "tablet", 4)
                .await
                .unwrap()
                .is_empty(),
            "second device: no new receipts"
        );
        // Receipts are in alice's timeline, readable by sync.
        let page = store.timeline("alice", 0, 0, 10).await.unwrap();
        assert_eq!(page.entries.len(), 4);
    }

    const LIMITS: GroupLimits = GroupLimits {
        members: 10,
        large_members: 100,
    };

    fn group_msg(from: &str, group: &str, n: u8) -> NewMessage {
        NewMessage {
            kind: pb::ConversationKind::Group,
            ..msg(from, group, n)
        }
    }

    async fn create_group(store: &SqliteStore, members: &[&str]) -> String {
        store
            .group_op(
                GroupOp::Create {
                    id: "g1".into(),
                    name: "team".into(),
                    owner: members[0].into(),
                    members: members.iter().map(|m| m.to_string()).collect(),
                    large: false,
                },
                LIMITS,
            )
            .await
            .unwrap()
            .info
            .group
    }

    #[tokio::test]
    async fn group_messages_reach_every_member_and_membership_is_checked_per_send() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let g = create_group(&store, &["alice", "bob", "carol"]).await;
        // Creation is a group event in every member's timeline.
        assert_eq!(store.head_seq("carol").await.unwrap(), 1);
        let sent = store.store_message(group_msg("bob", &g, 1)).await.unwrap();
        let mut users: Vec<&str> = sent.fanout.iter().map(|f| f.user.as_str()).collect();
        users[1..].sort();
        assert_eq!(
            users,
            vec!["bob", "alice", "carol"],
            "the sender's own entry first"
        );
        let seqs: Vec<u64> = sent.fanout.iter().map(|f| f.entry.seq).collect();
        assert_eq!(seqs, vec![2, 2, 2], "each after the group's creation event");
        let alice = store.timeline("alice", 1, 0, 10).await.unwrap();
        assert_eq!(alice.entries.len(), 1);
        let carol = store.summaries("carol", 5, 10).await.unwrap();
        assert_eq!(
            (
                carol.conversations[0].conversation.as_str(),
                carol.conversations[0].unread
            ),
            ("g1", 1)
        );
        assert!(matches!(
            store.store_message(group_msg("mallory", &g, 2)).await,
            Err(StoreError::NotAllowed(_))
        ));
        assert!(matches!(
            store.store_message(group_msg("bob", "nope", 3)).await,
            Err(StoreError::GroupNotFound)
        ));
        // Only the owner removes; a removed member can no longer send.
        let remove = |by: &str| GroupOp::Remove {
            group: g.clone(),
            by: Some(by.into()),
            members: vec!["carol".into()],
        };
        assert!(matches!(
            store.group_op(remove("bob"), LIMITS).await,
            Err(StoreError::NotAllowed(_))
        ));
        let out = store.group_op(remove("alice"), LIMITS).await.unwrap();
        assert_eq!(out.info.members, vec!["alice", "bob"]);
        assert_eq!(out.fanout.len(), 3, "the removed member is told too");
        assert!(matches!(
            store.store_message(group_msg("carol", &g, 4)).await,
            Err(StoreError::NotAllowed(_))
        ));
        // Size limit, and the owner leaving hands the group over.
        let add = GroupOp::Add {
            group: g.clone(),
            by: Some("bob".into()),
            members: (0..9).map(|i| format!("u{i}")).collect(),
        };
        assert!(matches!(
            store.group_op(add, LIMITS).await,
            Err(StoreError::GroupFull)
        ));
        let left = store
            .group_op(
                GroupOp::Leave {
                    group: g.clone(),
                    user: "alice".into(),
                },
                LIMITS,
            )
            .await
            .unwrap();
        assert_eq!(left.info.owner, "bob");
        assert_eq!(store.groups_of("bob").await.unwrap().len(), 1);
        assert!(store.groups_of("alice").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_large_group_writes_one_log_entry_per_message_not_one_per_member() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let members: Vec<String> = (0..50).map(|i| format!("u{i}")).collect();
        let created = store
            .group_op(
                GroupOp::Create {
                    id: "big".into(),
                    name: "town hall".into(),
                    owner: "u0".into(),
                    members: members.clone(),
                    large: true,
                },
                LIMITS,
            )
            .await
            .unwrap();
        assert!(created.info.large);
        // The log's creation event, and one own-timeline event per (initial) member.
        assert_eq!(created.fanout.len(), 51);
        assert!(created.fanout[0].log.is_some());
        assert_eq!(store.head_seq("u7").await.unwrap(), 1);
        let sent = store
            .store_message(group_msg("u3", "big", 1))
            .await
            .unwrap();
        assert_eq!((sent.sender_seq, sent.log_seq), (0, 2));
        assert_eq!(sent.fanout.len(), 1);
        assert_eq!(sent.fanout[0].log.as_ref().unwrap().group, "big");
        assert_eq!(
            store.head_seq("u7").await.unwrap(),
            1,
            "no entry per member"
        );
        assert_eq!(store.head_seq("u3").await.unwrap(), 1, "nor for the sender");
        let again = store
            .store_message(group_msg("u3", "big", 1))
            .await
            .unwrap();
        assert_eq!((again.duplicate, again.log_seq), (true, 2));
        assert!(store.log_member("u7", "big").await.unwrap());
        assert!(!store.log_member("mallory", "big").await.unwrap());
        let page = store.timeline("#big", 0, 0, 10).await.unwrap();
        assert_eq!(page.entries.len(), 2);
        // Summaries in log positions; read marks in log positions.
        let logs = store.logs("u7", 5).await.unwrap();
        assert_eq!(
            (logs[0].latest_seq, logs[0].unread, logs[0].last.len()),
            (2, 1, 1)
        );
        let fan = store
            .mark_read("u7", pb::ConversationKind::Group, "big", 2, 100)
            .await
            .unwrap();
        match &fan[0].entry.body {
            Some(pb::timeline_entry::Body::Receipt(r)) => {
                assert_eq!(
                    (r.log.as_str(), r.up_to_seq, r.at_seq, r.unread),
                    ("big", 2, 2, 0)
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.logs("u7", 5).await.unwrap()[0].unread, 0);
        let (hist, more) = store
            .history("u7", pb::ConversationKind::Group, "big", 0, 10)
            .await
            .unwrap();
        assert_eq!((hist.len(), more), (1, false));
        // A recall is one log entry.
        let fan = store
            .recall("u3", sent.server_msg_id, 60_000)
            .await
            .unwrap();
        assert_eq!((fan.len(), fan[0].entry.seq), (1, 3));
        // Over the large limit.
        let add = GroupOp::Add {
            group: "big".into(),
            by: Some("u1".into()),
            members: (0..60).map(|i| format!("x{i}")).collect(),
        };
        assert!(matches!(
            store.group_op(add, LIMITS).await,
            Err(StoreError::GroupFull)
        ));
    }

    #[tokio::test]
    async fn read_marks_reset_unread_and_tell_senders_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        for n in 1..=3 {
            store.store_message(msg("alice", "bob", n)).await.unwrap();
        }
        let fan = store
            .mark_read("bob", pb::ConversationKind::Direct, "alice", 2, 100)
            .await
            .unwrap();
        assert_eq!(fan.len(), 2, "bob's own mark and alice's receipt");
        match &fan[0].entry.body {
            Some(pb::timeline_entry::Body::Receipt(r)) => {
                assert_eq!((r.by_user.as_str(), r.up_to_seq), ("bob", 2));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(fan[1].user, "alice");
        let bob = store.summaries("bob", 0, 10).await.unwrap();
        assert_eq!(bob.conversations[0].unread, 1, "one message above the mark");
        assert!(
            store
                .mark_read("bob", pb::ConversationKind::Direct, "alice", 1, 100)
                .await
                .unwrap()
                .is_empty(),
            "an older mark changes nothing"
        );
    }

    #[tokio::test]
    async fn recall_erases_content_within_the_window_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let m = store.store_message(msg("alice", "bob", 1)).await.unwrap();
        assert!(matches!(
            store.recall("bob", m.server_msg_id, 60_000).await,
            Err(StoreError::MessageNotFound)
        ));
        let fan = store
            .recall("alice", m.server_msg_id, 60_000)
            .await
            .unwrap();
        assert_eq!(fan.len(), 2);
        let page = store.timeline("bob", 0, 0, 10).await.unwrap();
        match &page.entries[0].body {
            Some(pb::timeline_entry::Body::Message(m)) => {
                assert!(m.recalled && m.body.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            page.entries[1].body,
            Some(pb::timeline_entry::Body::Recall(_))
        ));
        let old = store.store_message(msg("alice", "bob", 2)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(matches!(
            store.recall("alice", old.server_msg_id, 1).await,
            Err(StoreError::RecallExpired)
        ));
    }

    #[tokio::test]
    async fn history_pages_back_through_one_conversation() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        for n in 1..=5 {
            store.store_message(msg("alice", "bob", n)).await.unwrap();
            store.store_message(msg("carol", "bob", n)).await.unwrap();
        }
        let (page, more) = store
            .history("bob", pb::ConversationKind::Direct, "alice", 0, 3)
            .await
            .unwrap();
        let seqs: Vec<u64> = page.iter().map(|e| e.seq).collect();
        assert_eq!((seqs, more), (vec![9, 7, 5], true));
        let (page, more) = store
            .history("bob", pb::ConversationKind::Direct, "alice", 5, 3)
            .await
            .unwrap();
        assert_eq!(
            (page.iter().map(|e| e.seq).collect::<Vec<_>>(), more),
            (vec![3, 1], false)
        );
    }

    #[tokio::test]
    async fn c2s_messages_queue_a_webhook_in_the_same_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Normal).unwrap();
        let m = NewMessage {
            to_service: true,
            ..msg("alice", "bot", 1)
        };
        store.store_message(m.clone()).await.unwrap();
        store.store_message(m).await.unwrap(); // a resend: no second delivery
        let due = store.webhooks_due(u64::MAX, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&due[0].payload).unwrap();
        assert_eq!(
            (v["sender"].as_str(), v["text"].as_str()),
            (Some("alice"), Some("hello 1"))
        );
        store.webhook_retry(due[0].id, 1_000).await.unwrap();
        assert!(store.webhooks_due(999, 10).await.unwrap().is_empty());
        assert_eq!(store.webhooks_due(1_000, 10).await.unwrap()[0].attempts, 1);
        store.webhook_done(due[0].id).await.unwrap();
        assert!(store.webhooks_due(u64::MAX, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn online_backup_is_a_complete_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path(), Durability::Full).unwrap();
        store.store_message(msg("alice", "bob", 1)).await.unwrap();
        let out = tempfile::tempdir().unwrap();
        SqliteStore::backup(dir.path(), &out.path().join("tern.db")).unwrap();
        store.store_message(msg("alice", "bob", 2)).await.unwrap(); // still serving
        let copy = SqliteStore::open(out.path(), Durability::Full).unwrap();
        assert_eq!(copy.head_seq("bob").await.unwrap(), 1);
        assert!(
            copy.store_message(msg("alice", "bob", 1))
                .await
                .unwrap()
                .duplicate
        );
    }

    #[tokio::test]
    async fn reopening_keeps_everything_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path(), Durability::Full).unwrap();
            store.store_message(msg("alice", "bob", 1)).await.unwrap();
        }
        let store = SqliteStore::open(dir.path(), Durability::Full).unwrap();
        assert_eq!(store.head_seq("bob").await.unwrap(), 1);
        assert!(
            store
                .store_message(msg("alice", "bob", 1))
                .await
                .unwrap()
                .duplicate
        );
    }
}
