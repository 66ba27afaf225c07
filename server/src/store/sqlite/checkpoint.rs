//! WAL checkpoints off the writer's commit: a thread of its own, with its own
//! connection, copies committed pages from the write-ahead log back into the database
//! file, so no batch of messages waits for the copy.
//!
//! SQLite's automatic checkpoint (every 1,000 WAL pages) runs inside the commit that
//! crosses the threshold, on the writer thread: every job of that batch waited for it.
//! A larger threshold copies less (a page changed many times between two checkpoints,
//! such as a timeline's head row, reaches the database file once), but made that one
//! commit long: with 8,192 pages the p99 at 50 % load went from 12 to 35–54 ms
//! (docs/bench/analysis.md, ninth round).
//!
//! Here the writer's WAL hook (called after each commit with the WAL's size in pages)
//! wakes this thread once [`WAKE_PAGES`], or [`COMMITS_PER_PASS`] commits the size of
//! the latest, were written since its last pass, and the thread runs a `PASSIVE`
//! checkpoint: it copies what no reader still needs and never blocks the writer or a
//! reader. Nothing acknowledged depends on it: a message is in the WAL, synced, when
//! its commit returns.
//!
//! The WAL starts over from its beginning only at a write that finds all of it copied.
//! A pass runs beside the writer, which keeps appending, so a pass rarely catches it
//! up: when the writer pauses ([`IDLE`] without a commit) and the WAL holds frames no
//! pass copied (written during the last pass, or after it and too few to wake the
//! thread), one more pass copies them. (So after a pass the thread looks at the WAL's
//! size every [`IDLE`] until it finds the writer paused and everything copied.) A load that never pauses reaches [`RESTART_PAGES`];
//! there the writer copies what the thread has not (a few commits' worth, unless the
//! thread fell behind) so that the next commit starts the WAL over: `tern.db-wal` is
//! bounded.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, hooks::Wal, wal::CheckpointMode};

use super::StoreError;

/// Pages (of 4 KiB) written since the checkpointer's last pass at which it is woken,
/// at least: as often as SQLite's own automatic checkpoint.
pub(super) const WAKE_PAGES: i32 = 1024;

/// Commits (of the size of the latest) between two passes, when that is more than
/// [`WAKE_PAGES`]: under a load that fills the writer's batches a pass copies a page
/// changed by several commits once. (A fixed 4,096 pages gained the same at capacity
/// but raised the p99 at 50 % load from 6 to 25–30 ms: large passes slow the commits'
/// own syncs. At that load commits are small, and so are the passes.)
pub(super) const COMMITS_PER_PASS: i32 = 8;

/// WAL size at which the writer copies what is left itself, so that the WAL starts
/// over (64 MiB).
pub(super) const RESTART_PAGES: i32 = 16 * WAKE_PAGES;

/// A writer this long without a commit has paused: the WAL is copied to its end.
pub(super) const IDLE: Duration = Duration::from_millis(50);

/// What the writer's hook and the checkpointer thread share.
#[derive(Default)]
struct Progress {
    /// The WAL frame up to which the thread's last pass copied.
    copied: AtomicI32,
    /// The WAL's size in pages at the writer's last commit.
    wal_pages: AtomicI32,
}

/// Starts the checkpointer thread on `conn` (its own connection to the store's file)
/// and installs the hook on `writer` that wakes it. The thread ends, after one last
/// checkpoint, when the writer connection is dropped.
pub(super) fn start(writer: &mut Connection, conn: Connection) -> Result<(), StoreError> {
    let (wake, progress) = spawn(conn)?;
    install(writer, wake, progress, WAKE_PAGES, RESTART_PAGES)
}

/// Starts the checkpointer thread on `conn`: the sender that wakes it and the progress
/// it shares with the writer's hook.
fn spawn(conn: Connection) -> Result<(mpsc::SyncSender<()>, Arc<Progress>), StoreError> {
    // One pending wake is enough: a wake during a pass is one more pass after it.
    let (wake, rx) = mpsc::sync_channel::<()>(1);
    let progress = Arc::new(Progress::default());
    let shared = progress.clone();
    std::thread::Builder::new()
        .name("tern-store-checkpoint".into())
        .spawn(move || run(conn, rx, &shared))
        .map_err(|e| StoreError::Io(format!("spawn checkpointer: {e}")))?;
    Ok((wake, progress))
}

/// The writer's WAL hook: wakes the checkpointer once `wake_pages`, or
/// [`COMMITS_PER_PASS`] commits the size of this one, were written since its last
/// pass; copies the rest itself when the WAL holds `restart_pages`. It replaces
/// SQLite's automatic checkpoint (itself a WAL hook).
///
/// Counted from the last pass, not from the WAL's start: under a load that never
/// pauses the WAL does not start over between passes, and a wake at every commit past
/// a size ran a pass, with its sync, per commit: more CPU in all, for a few pages each.
fn install(
    writer: &mut Connection,
    wake: mpsc::SyncSender<()>,
    progress: Arc<Progress>,
    wake_pages: i32,
    restart_pages: i32,
) -> Result<(), StoreError> {
    let mut last = 0;
    writer.wal_hook(Some(move |wal: &mut Wal, pages: i32| {
        let this_commit = if pages < last {
            // The WAL started over: everything before was copied.
            progress.copied.store(0, Ordering::Relaxed);
            pages
        } else {
            pages - last
        };
        last = pages;
        progress.wal_pages.store(pages, Ordering::Relaxed);
        // (A pass that ended after the WAL started over may name a frame past it.)
        let copied = progress.copied.load(Ordering::Relaxed);
        let fresh = if copied > pages {
            pages
        } else {
            pages - copied
        };
        let wake_at = COMMITS_PER_PASS
            .saturating_mul(this_commit)
            .clamp(wake_pages, (restart_pages / 2).max(wake_pages));
        if pages >= restart_pages {
            if fresh > wake_at {
                metrics::counter!("tern_store_checkpoint_backstops_total").increment(1);
                tracing::warn!(
                    pages = fresh,
                    "WAL checkpointer behind; the writer copies the WAL itself"
                );
            }
            // Never an error out of this hook: SQLite would report it from a COMMIT
            // that has happened. A busy checkpointer is copying already.
            if let Err(e) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                tracing::warn!(error = %e, "the writer's WAL checkpoint failed");
            }
        } else if fresh >= wake_at {
            // Full: a wake is pending already. Disconnected cannot happen while the
            // writer lives (the thread ends only when this hook is dropped).
            let _ = wake.try_send(());
        }
        Ok(())
    }))?;
    Ok(())
}

fn run(conn: Connection, wake: mpsc::Receiver<()>, progress: &Progress) {
    // Whether the WAL may hold frames no pass copied (written during the last pass, or
    // after it and too few to wake the thread), and its size when last looked at.
    let (mut behind, mut seen) = (false, 0);
    loop {
        let last = if behind {
            match wake.recv_timeout(IDLE) {
                Ok(()) => false,
                Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => {
                    let now = progress.wal_pages.load(Ordering::Relaxed);
                    if now != seen {
                        // Still writing: the next wake (or pause) copies it.
                        seen = now;
                        continue;
                    }
                    if progress.copied.load(Ordering::Relaxed) >= now {
                        // Paused with everything copied: sleep until woken.
                        behind = false;
                        continue;
                    }
                    false
                }
            }
        } else {
            wake.recv().is_err()
        };
        let started = Instant::now();
        match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
            Ok((frames, copied)) => {
                progress.copied.store(copied, Ordering::Relaxed);
                // Looked at again in the next pause, even if this pass copied all:
                // the commits after it that do not reach a wake are copied then.
                (behind, seen) = (true, frames);
                metrics::histogram!("tern_store_checkpoint_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::gauge!("tern_store_wal_frames").set(f64::from((frames - copied).max(0)));
            }
            // A busy database or a full disk: the next wake tries again, and the
            // writer's restart point keeps the WAL bounded meanwhile.
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::sqlite::schema::{Durability, open};

    const PAGE: u64 = 4096;

    fn file_len(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// Writes `txs` transactions of ten rows of 3 KB each (about ten pages).
    fn write(conn: &Connection, txs: usize) {
        for _ in 0..txs {
            conn.execute_batch(
                "BEGIN; INSERT INTO t(b) SELECT randomblob(3000) FROM \
                 (SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 \
                  UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL \
                  SELECT 8 UNION ALL SELECT 9 UNION ALL SELECT 10); COMMIT;",
            )
            .unwrap();
        }
    }

    fn writer(dir: &std::path::Path) -> Connection {
        let conn = open(&dir.join("t.db"), Durability::Normal, false).unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB)")
            .unwrap();
        conn
    }

    /// The checkpointer, not the writer, copies the WAL into the database file once it
    /// holds WAKE_PAGES, and the WAL then starts over instead of growing.
    #[test]
    fn the_checkpointer_copies_the_wal_and_it_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = writer(dir.path());
        let (wake, progress) =
            spawn(open(&dir.path().join("t.db"), Durability::Normal, false).unwrap()).unwrap();
        install(&mut conn, wake, progress.clone(), WAKE_PAGES, RESTART_PAGES).unwrap();
        let (db, wal) = (dir.path().join("t.db"), dir.path().join("t.db-wal"));
        let before = file_len(&db);
        // Under the wake threshold: nothing is copied (the writer does not checkpoint).
        write(&conn, WAKE_PAGES as usize / 20);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(file_len(&db), before, "no checkpoint below the threshold");
        // Past it: the checkpointer copies, and the database file grows.
        write(&conn, WAKE_PAGES as usize / 10);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while file_len(&db) < before + WAKE_PAGES as u64 / 2 * PAGE {
            assert!(std::time::Instant::now() < deadline, "no checkpoint ran");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Many more rounds, each followed by a pause: the thread copies the WAL to its
        // end in the pause (waited for here, however slow a loaded machine makes the
        // thread: a fixed pause failed in CI), and the next round writes it from its
        // start again. Its file keeps the size it once reached (SQLite reuses it,
        // without truncating), far under what was written and under the writer's
        // restart point.
        let rounds = 20;
        for _ in 0..rounds {
            write(&conn, WAKE_PAGES as usize / 10);
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while progress.copied.load(Ordering::Relaxed)
                < progress.wal_pages.load(Ordering::Relaxed)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the WAL was not copied to its end in a pause"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let written = rounds as u64 * WAKE_PAGES as u64 * PAGE;
        assert!(
            file_len(&wal) < RESTART_PAGES as u64 / 2 * PAGE,
            "the WAL holds {} bytes after {written} written",
            file_len(&wal)
        );
    }

    /// A pass that could not copy everything (here a reader holds an old snapshot)
    /// is followed by another once the writer pauses, with no commit to wake it.
    #[test]
    fn a_pass_left_short_is_finished_when_the_writer_pauses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = writer(dir.path());
        start(&mut conn, open(&path, Durability::Normal, false).unwrap()).unwrap();
        let reader = open(&path, Durability::Normal, true).unwrap();
        reader
            .execute_batch("BEGIN; SELECT count(*) FROM t;")
            .unwrap();
        let before = file_len(&path);
        write(&conn, WAKE_PAGES as usize / 8);
        std::thread::sleep(IDLE * 4);
        assert_eq!(
            file_len(&path),
            before,
            "the reader's snapshot holds the pages"
        );
        reader.execute_batch("COMMIT").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while file_len(&path) < before + WAKE_PAGES as u64 / 2 * PAGE {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing copied after the reader let go"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A checkpointer that never runs (stalled): the writer's backstop copies the WAL
    /// itself, so the WAL file stays bounded.
    #[test]
    fn a_stalled_checkpointer_leaves_the_writer_to_bound_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = writer(dir.path());
        let (wake, _stalled) = mpsc::sync_channel::<()>(1);
        install(&mut conn, wake, Arc::default(), 100, 400).unwrap();
        write(&conn, 400);
        let wal = file_len(&dir.path().join("t.db-wal"));
        assert!(wal > 0);
        assert!(
            wal <= (400 + 64) * PAGE,
            "the WAL holds {wal} bytes, past the backstop"
        );
    }
}
