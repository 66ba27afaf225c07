//! The writer's transaction: `BEGIN`, `COMMIT` and `ROLLBACK` run as statements prepared
//! once and kept in the connection's statement cache.
//!
//! rusqlite's `Transaction` runs each of them with `execute_batch`, which parses the SQL
//! every time: with one message per commit (a chat at low load) that parsing was 4.5 %
//! of the writer thread's instructions (callgrind, docs/bench/analysis.md, "Cost per
//! message: ninth round"). Everything that writes inside a batch takes a
//! [`Tx`], so a function that must run inside the writer's transaction says so in its
//! signature, as it did with rusqlite's type.

use std::ops::Deref;

use rusqlite::Connection;

/// An open write transaction on `conn`, rolled back when dropped without
/// [`commit`](Tx::commit) (or when the commit fails).
pub(super) struct Tx<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Tx<'c> {
    /// `BEGIN` (deferred, as rusqlite's default: the writer is the only writer).
    pub(super) fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(Tx { conn, open: true })
    }

    /// `COMMIT`; on an error the transaction is rolled back as the `Tx` is dropped.
    pub(super) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }
}

impl Deref for Tx<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Tx<'_> {
    fn drop(&mut self) {
        // SQLite may already have ended the transaction (some errors roll it back).
        if self.open && !self.conn.is_autocommit() {
            if let Err(e) = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut s| s.execute([]))
            {
                tracing::error!(error = %e, "store rollback failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x INTEGER)").unwrap();
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_committed_transaction_stands_and_a_dropped_one_is_undone() {
        let conn = conn();
        let tx = Tx::begin(&conn).unwrap();
        tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        tx.commit().unwrap();
        assert!(conn.is_autocommit());
        {
            let tx = Tx::begin(&conn).unwrap();
            tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
            assert!(!conn.is_autocommit());
        }
        assert!(conn.is_autocommit(), "dropped: rolled back");
        assert_eq!(rows(&conn), 1);
        // The cached statements run again (a second batch on the same connection).
        let tx = Tx::begin(&conn).unwrap();
        tx.execute("INSERT INTO t VALUES (3)", []).unwrap();
        tx.commit().unwrap();
        assert_eq!(rows(&conn), 2);
    }
}
