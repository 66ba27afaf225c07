//! The SQLite schema: numbered migrations (files in `migrations/`, applied in order and
//! recorded in `PRAGMA user_version`), the connection settings, and the durability
//! level.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

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

/// The schema, one file per migration; a migration is never edited once released, a
/// change is a new file.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_timelines.sql"),
    include_str!("migrations/0002_groups_marks_webhooks.sql"),
    include_str!("migrations/0003_large_group_logs.sql"),
    include_str!("migrations/0004_device_send_order.sql"),
    include_str!("migrations/0005_store_generation.sql"),
    include_str!("migrations/0006_conversation_index_messages_only.sql"),
];

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
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

pub(super) fn open(
    path: &Path,
    durability: Durability,
    read_only: bool,
) -> Result<Connection, StoreError> {
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
    // Tests watch the statements of stores opened under a directory they registered.
    #[cfg(test)]
    let conn = super::plans::traced(conn, path);
    Ok(conn)
}

/// Checks an existing database file before the server uses it: a 0-byte file (a
/// failed copy, a truncated restore) is refused unless `create` says to start a new
/// store in its place, and a file that fails `PRAGMA quick_check` is always refused
/// (restore a backup). A missing file is a first start: created.
pub(super) fn check_existing(path: &Path, create: bool) -> Result<(), StoreError> {
    let Ok(meta) = std::fs::metadata(path) else {
        tracing::info!(path = %path.display(), "no database yet: creating a new store");
        return Ok(());
    };
    if meta.len() == 0 {
        if create {
            tracing::warn!(path = %path.display(), "database file is empty: creating a new store (--create-store)");
            return Ok(());
        }
        return Err(StoreError::Io(format!(
            "{} is empty (0 bytes): restore a backup (tern-server restore), or start with --create-store to make a new, empty store",
            path.display()
        )));
    }
    quick_check(path)
}

/// Runs `PRAGMA quick_check` on the database at `path`.
pub(super) fn quick_check(path: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Io(format!("{} cannot be opened: {e}", path.display())))?;
    let verdict: Result<String, rusqlite::Error> =
        conn.query_row("PRAGMA quick_check(1)", [], |r| r.get(0));
    match verdict {
        Ok(v) if v == "ok" => Ok(()),
        Ok(v) => Err(StoreError::Io(format!(
            "{} fails its integrity check ({v}): restore a backup (tern-server restore)",
            path.display()
        ))),
        Err(e) => Err(StoreError::Io(format!(
            "{} is not a readable database ({e}): restore a backup (tern-server restore)",
            path.display()
        ))),
    }
}

/// The store's generation (see migration 0005).
pub(super) fn generation(conn: &Connection) -> Result<u64, StoreError> {
    Ok(
        conn.query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| {
            r.get::<_, i64>(0)
        })? as u64,
    )
}

/// A migrated writer connection on a new file in a temporary directory (kept alive by
/// the returned `TempDir`), for the writer's unit tests.
#[cfg(test)]
pub(super) fn test_writer() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = open(&dir.path().join("t.db"), Durability::Full, false).unwrap();
    migrate(&mut conn).unwrap();
    (dir, conn)
}
