//! The writer's transaction: `BEGIN`, `COMMIT` and `ROLLBACK` run as statements prepared
//! once and kept in the connection's statement cache; and the heads of the timelines the
//! writer took seqs in, kept between batches.
//!
//! rusqlite's `Transaction` runs each of them with `execute_batch`, which parses the SQL
//! every time: with one message per commit (a chat at low load) that parsing was 4.5 %
//! of the writer thread's instructions (callgrind, docs/bench/analysis.md, "Cost per
//! message: ninth round"). Everything that writes inside a batch takes a [`Tx`], so a
//! function that must run inside the writer's transaction says so in its signature, as it
//! did with rusqlite's type.
//!
//! [`Heads`] spares `timeline::next_seq` reading back the head it has just moved: a
//! message takes two or three seqs. The writer is the only writer of the store, so what
//! it last wrote is the head, until a transaction or a savepoint is rolled back: then the
//! heads are forgotten. And every cached head is checked by the write itself (an UPDATE
//! that moves the head only from the value cached), so a wrong one costs a read, never a
//! wrong seq.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Deref;

use rusqlite::Connection;

/// Most heads kept; past it they are all forgotten (a head is one read away). About
/// 100 bytes each: a few MB at most.
const MAX_HEADS: usize = 65_536;

/// The head (last seq taken) of each timeline or log the writer moved since the last
/// rollback.
#[derive(Default)]
pub(super) struct Heads(RefCell<HashMap<String, u64>>);

impl Heads {
    /// The cached head of `owner`'s timeline.
    pub(super) fn get(&self, owner: &str) -> Option<u64> {
        self.0.borrow().get(owner).copied()
    }

    /// Records `head` as `owner`'s head.
    pub(super) fn set(&self, owner: &str, head: u64) {
        let mut map = self.0.borrow_mut();
        if let Some(h) = map.get_mut(owner) {
            *h = head;
            return;
        }
        if map.len() >= MAX_HEADS {
            map.clear();
        }
        map.insert(owner.to_owned(), head);
    }

    /// Forgets every head (after a rollback).
    pub(super) fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

/// An open write transaction on `conn`, rolled back when dropped without
/// [`commit`](Tx::commit) (or when the commit fails).
pub(super) struct Tx<'c> {
    conn: &'c Connection,
    heads: &'c Heads,
    open: bool,
}

impl<'c> Tx<'c> {
    /// `BEGIN` (deferred, as rusqlite's default: the writer is the only writer).
    pub(super) fn begin(conn: &'c Connection, heads: &'c Heads) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(Tx {
            conn,
            heads,
            open: true,
        })
    }

    /// `COMMIT`; on an error the transaction is rolled back as the `Tx` is dropped.
    pub(super) fn commit(mut self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.open = false;
        Ok(())
    }

    /// The heads the writer keeps (see the module docs).
    pub(super) fn heads(&self) -> &Heads {
        self.heads
    }

    /// `ROLLBACK TO` the savepoint `name`: what the job wrote is undone, heads included.
    pub(super) fn rollback_to(&self, name: &str) -> rusqlite::Result<()> {
        self.heads.clear();
        self.conn
            .prepare_cached(&format!("ROLLBACK TO {name}"))?
            .execute([])?;
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
        if !self.open {
            return;
        }
        self.heads.clear();
        // SQLite may already have ended the transaction (some errors roll it back).
        if !self.conn.is_autocommit() {
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
        let heads = Heads::default();
        let tx = Tx::begin(&conn, &heads).unwrap();
        tx.execute("INSERT INTO t VALUES (1)", []).unwrap();
        tx.commit().unwrap();
        assert!(conn.is_autocommit());
        {
            let tx = Tx::begin(&conn, &heads).unwrap();
            tx.execute("INSERT INTO t VALUES (2)", []).unwrap();
            assert!(!conn.is_autocommit());
        }
        assert!(conn.is_autocommit(), "dropped: rolled back");
        assert_eq!(rows(&conn), 1);
        // The cached statements run again (a second batch on the same connection).
        let tx = Tx::begin(&conn, &heads).unwrap();
        tx.execute("INSERT INTO t VALUES (3)", []).unwrap();
        tx.commit().unwrap();
        assert_eq!(rows(&conn), 2);
    }

    mod heads {
        use super::*;
        use crate::store::sqlite::schema::test_writer as store;
        use crate::store::sqlite::timeline::{head_seq, next_seq};

        #[test]
        fn heads_are_kept_across_commits_and_forgotten_on_a_rollback() {
            let (_dir, conn) = store();
            let heads = Heads::default();
            let tx = Tx::begin(&conn, &heads).unwrap();
            assert_eq!(next_seq(&tx, "alice").unwrap(), 1);
            assert_eq!(next_seq(&tx, "alice").unwrap(), 2);
            tx.commit().unwrap();
            assert_eq!(heads.get("alice"), Some(2), "kept for the next batch");
            {
                let tx = Tx::begin(&conn, &heads).unwrap();
                assert_eq!(next_seq(&tx, "alice").unwrap(), 3);
            } // dropped: rolled back
            assert_eq!(heads.get("alice"), None, "forgotten with the rollback");
            let tx = Tx::begin(&conn, &heads).unwrap();
            assert_eq!(
                next_seq(&tx, "alice").unwrap(),
                3,
                "the rolled-back seq again"
            );
            tx.execute_batch("SAVEPOINT job").unwrap();
            assert_eq!(next_seq(&tx, "alice").unwrap(), 4);
            tx.rollback_to("job").unwrap();
            tx.execute_batch("RELEASE job").unwrap();
            assert_eq!(
                next_seq(&tx, "alice").unwrap(),
                4,
                "undone with its savepoint"
            );
            tx.commit().unwrap();
            assert_eq!(head_seq(&conn, "alice").unwrap(), 4);
        }

        #[test]
        fn a_stale_cached_head_is_read_back_not_used() {
            let (_dir, conn) = store();
            let heads = Heads::default();
            let tx = Tx::begin(&conn, &heads).unwrap();
            assert_eq!(next_seq(&tx, "alice").unwrap(), 1);
            heads.set("alice", 7); // what the bookkeeping must never let happen
            assert_eq!(next_seq(&tx, "alice").unwrap(), 2);
            assert_eq!(heads.get("alice"), Some(2));
            tx.commit().unwrap();
            assert_eq!(head_seq(&conn, "alice").unwrap(), 2);
        }
    }
}
