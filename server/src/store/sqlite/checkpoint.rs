//! The WAL checkpointer: copies committed pages from the write-ahead log back into the
//! database file on its own thread and connection, so the writer never does.
//!
//! SQLite's automatic checkpoint runs inside the commit that pushes the WAL past 1,000
//! pages: every job of that batch waited for it, and under load it was a tenth of the
//! writer's time. Here the writer has `wal_autocheckpoint = 0`, and this thread runs a
//! `PASSIVE` checkpoint every [`INTERVAL`]: it copies what no reader still needs and
//! never blocks the writer or a reader. A page written many times between two
//! checkpoints reaches the database file once. With the writer's `synchronous=FULL`,
//! the checkpoint fsyncs the database file before the WAL is reused, so nothing
//! acknowledged depends on the checkpoint: it is in the WAL, fsynced, at the commit.
//! The WAL restarts from its start once a checkpoint has copied all of it; a reader
//! holding an old snapshot only delays that.

use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

/// Time between two checkpoints.
pub(super) const INTERVAL: Duration = Duration::from_millis(250);

/// Held by the store; dropping it ends the thread (after one last checkpoint).
pub(super) struct Handle {
    _stop: mpsc::Sender<()>,
}

/// Starts the checkpointer on `conn` (its own connection to the store's file).
pub(super) fn start(conn: Connection) -> Result<Handle, StoreError> {
    let (stop, rx) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("tern-store-checkpoint".into())
        .spawn(move || run(conn, rx))
        .map_err(|e| StoreError::Io(format!("spawn checkpointer: {e}")))?;
    Ok(Handle { _stop: stop })
}

fn run(conn: Connection, stop: mpsc::Receiver<()>) {
    loop {
        let last = matches!(
            stop.recv_timeout(INTERVAL),
            Err(mpsc::RecvTimeoutError::Disconnected) | Ok(())
        );
        let started = std::time::Instant::now();
        // (busy, frames in the WAL, frames checkpointed)
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
            Ok((frames, copied)) if frames > 0 => {
                metrics::histogram!("tern_store_checkpoint_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::gauge!("tern_store_wal_frames").set((frames - copied).max(0) as f64);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; retried in {INTERVAL:?}"),
        }
        if last {
            return;
        }
    }
}
