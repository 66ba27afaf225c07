//! Query plans of every statement the store runs: none may walk a whole table.
//!
//! The store never runs `ANALYZE`, so SQLite plans each statement from the schema alone,
//! and a statement no index serves walks a table: a cost that grows with every user's
//! data, not with the answer, and one a user could make everyone pay. This test traces
//! the SQL text of every statement the store's connections run while it is driven
//! through every [`Store`](crate::store::Store) method and the behaviour suite (about 70
//! statements), asks SQLite for each one's plan, and fails on a full scan of a table or
//! of an index (`SCAN t`, `SCAN t USING INDEX i`) unless it is listed in
//! [`BOUNDED_SCANS`] with the reason it is bounded.
//!
//! What it does not catch: a search that uses a shorter key than the statement offers.
//! The conversation reads once walked the owner's whole timeline by `(user, seq)`
//! instead of taking the per-conversation index (docs/bench/analysis.md, thirteenth
//! round); that plan is a `SEARCH`, bounded by one user's data. Those reads name their
//! index (`timeline::CONVERSATION_ENTRIES`), and `sqlite/tests.rs` asserts it.
//!
//! Tracing is test-only: [`traced`] installs it on the connections of stores opened
//! under a directory registered with [`record_under`], so other tests are untouched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use rusqlite::trace::{TraceEvent, TraceEventCodes};

/// SQL texts seen, shared by every traced connection of one test.
type Seen = Arc<Mutex<BTreeSet<String>>>;

/// Directories whose stores are traced, and where their statements go.
static RECORDERS: Mutex<Vec<(PathBuf, Seen)>> = Mutex::new(Vec::new());

/// Traces every store opened under `dir` from now on; returns the set their statements'
/// SQL texts are recorded in.
fn record_under(dir: &Path) -> Seen {
    let seen = Seen::default();
    RECORDERS
        .lock()
        .unwrap()
        .push((dir.to_path_buf(), seen.clone()));
    seen
}

/// Called by `schema::open` for every connection: traces it if `path` is under a
/// registered directory.
pub(super) fn traced(mut conn: Connection, path: &Path) -> Connection {
    let seen = RECORDERS
        .lock()
        .unwrap()
        .iter()
        .find(|(dir, _)| path.starts_with(dir))
        .map(|(_, seen)| seen.clone());
    if let Some(seen) = seen {
        conn.trace_v2(
            TraceEventCodes::SQLITE_TRACE_STMT,
            Some(move |e: TraceEvent<'_>| {
                if let TraceEvent::Stmt(_, sql) = e {
                    seen.lock().unwrap().insert(sql.to_string());
                }
            }),
        )
        .expect("trace");
    }
    conn
}

/// Full scans that are bounded, by a fragment of the statement and the table, with why.
const BOUNDED_SCANS: &[(&str, &str, &str)] = &[
    (
        "FROM messages ORDER BY id DESC LIMIT 1",
        "messages",
        "the writer's start reads the newest message by its rowid, backward: one row",
    ),
    (
        "SELECT user, head_seq FROM users",
        "users",
        "a restore records every timeline's head as its restore point: offline, once",
    ),
];

/// The plan's lines that walk a whole table or index of `tables`.
fn full_scans(conn: &Connection, sql: &str, tables: &BTreeSet<String>) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    // Unbound parameters are NULL; with no statistics the plan does not depend on them.
    let nulls = std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count());
    let lines: Vec<String> = stmt
        .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    lines
        .into_iter()
        .filter(|line| {
            let Some(rest) = line.strip_prefix("SCAN ") else {
                return false;
            };
            let table = rest.split(' ').next().unwrap_or_default();
            tables.contains(table)
                && !BOUNDED_SCANS
                    .iter()
                    .any(|(fragment, t, _)| *t == table && sql.contains(fragment))
        })
        .collect()
}

/// Whether the statement can have a plan worth checking (not DDL, a pragma or a
/// transaction boundary).
fn is_query(sql: &str) -> bool {
    let head = sql.trim_start().to_ascii_uppercase();
    ["SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "REPLACE"]
        .iter()
        .any(|k| head.starts_with(k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{Durability, SqliteStore};
    use crate::store::suite::msg;
    use crate::store::{GroupLimits, GroupOp, Store};
    use tern_protocol::pb;

    /// Calls every [`Store`] method at least once on a store with some data in it.
    async fn every_method(store: &SqliteStore, dir: &Path) {
        store.record_login("alice", "phone").await.unwrap();
        store.record_login("bob", "phone").await.unwrap();
        let mut recallable = 0;
        for n in 1..=3 {
            recallable = store
                .store_message(msg("alice", "bob", n))
                .await
                .unwrap()
                .server_msg_id;
        }
        store.ack_delivered("bob", "phone", 2).await.unwrap();
        store.timeline("bob", 0, 0, 10).await.unwrap();
        store.timeline("bob", 1, 3, 10).await.unwrap();
        store.summaries("bob", 3, 10).await.unwrap();
        store.next_send_seq("alice", "phone").await.unwrap();
        let _ = store.skip_send("alice", "phone", 1).await;
        store.head_seq("bob").await.unwrap();
        store.restore_point("bob").await.unwrap();
        store.user_exists("carol").await.unwrap();
        let limits = GroupLimits {
            members: 100,
            large_members: 1000,
        };
        let create = |id: &str, large: bool| GroupOp::Create {
            id: id.into(),
            name: id.into(),
            owner: "alice".into(),
            members: ["alice", "bob", "carol"].map(String::from).to_vec(),
            large,
        };
        store
            .group_op(create("small", false), limits)
            .await
            .unwrap();
        store.group_op(create("large", true), limits).await.unwrap();
        let who = |m: &str| vec![m.to_string()];
        for op in [
            GroupOp::Add {
                group: "small".into(),
                by: Some("alice".into()),
                members: who("dave"),
            },
            GroupOp::Remove {
                group: "small".into(),
                by: None,
                members: who("dave"),
            },
            GroupOp::Leave {
                group: "large".into(),
                user: "carol".into(),
            },
        ] {
            store.group_op(op, limits).await.unwrap();
        }
        let mut to_small = msg("alice", "small", 8);
        to_small.kind = pb::ConversationKind::Group;
        store.store_message(to_small).await.unwrap();
        let mut to_group = msg("alice", "large", 9);
        to_group.kind = pb::ConversationKind::Group;
        store.store_message(to_group).await.unwrap();
        store.log_member("bob", "large").await.unwrap();
        store.logs("bob", 3).await.unwrap();
        store.group_info("small").await.unwrap();
        store.groups_of("bob").await.unwrap();
        store
            .mark_read("bob", pb::ConversationKind::Direct, "alice", 3, 100)
            .await
            .unwrap();
        store
            .mark_read("bob", pb::ConversationKind::Group, "small", 9, 100)
            .await
            .unwrap();
        store.recall("alice", recallable, 60_000).await.unwrap();
        store
            .history("bob", pb::ConversationKind::Direct, "alice", 0, 2)
            .await
            .unwrap();
        store
            .set_push_token("bob", "phone", pb::Platform::Android, "fcm", "t")
            .await
            .unwrap();
        store.push_target("bob").await.unwrap();
        // An empty token removes the device's.
        store
            .set_push_token("bob", "phone", pb::Platform::Android, "fcm", "")
            .await
            .unwrap();
        store.webhook_enqueue("h", b"x".to_vec()).await.unwrap();
        let due = store.webhooks_due("h", u64::MAX, 10).await.unwrap();
        store.webhook_retry(due[0].id, 1).await.unwrap();
        store.webhook_done(due[0].id).await.unwrap();
        store.webhook_backlog("h").await.unwrap();
        store.flush().await.unwrap();
        SqliteStore::backup(dir, &dir.join("backup.db")).unwrap();
    }

    #[tokio::test]
    async fn no_statement_the_store_runs_walks_a_whole_table() {
        let root = tempfile::tempdir().unwrap();
        let seen = record_under(root.path());
        let dir = root.path().join("every-method");
        let store = SqliteStore::open(&dir, Durability::Full).unwrap();
        every_method(&store, &dir).await;
        let restored = root.path().join("restored");
        SqliteStore::restore(&restored, &dir.join("backup.db")).unwrap();
        // The behaviour suite, each case on a fresh store.
        let stores = std::sync::atomic::AtomicUsize::new(0);
        let fresh = || {
            let i = stores.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            SqliteStore::open(&root.path().join(format!("suite{i}")), Durability::Full).unwrap()
        };
        crate::store::suite::store_suite!(@run fresh).await;
        drop(store);
        let seen = seen.lock().unwrap().clone();
        let conn = Connection::open(dir.join("tern.db")).unwrap();
        let tables: BTreeSet<String> = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let queries: Vec<&String> = seen.iter().filter(|s| is_query(s)).collect();
        // A floor, so that a tracing that stopped working cannot pass as "no scans".
        assert!(queries.len() >= 60, "{} statements traced", queries.len());
        let scans: Vec<(String, Vec<String>)> = queries
            .iter()
            .map(|sql| (sql.to_string(), full_scans(&conn, sql, &tables)))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        assert!(scans.is_empty(), "statements that walk a table: {scans:#?}");
    }

    #[test]
    fn a_full_scan_is_found_and_a_search_is_not() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT); CREATE INDEX t_b ON t (b);",
        )
        .unwrap();
        let tables = BTreeSet::from(["t".to_string()]);
        assert_eq!(
            full_scans(&conn, "SELECT a FROM t WHERE a = 1", &tables).len(),
            0
        );
        assert_eq!(
            full_scans(&conn, "SELECT a FROM t WHERE b = 'x'", &tables).len(),
            0
        );
        assert_eq!(full_scans(&conn, "SELECT b FROM t", &tables).len(), 1);
        assert_eq!(
            full_scans(&conn, "SELECT a FROM t WHERE a + 0 = 1", &tables).len(),
            1
        );
        assert!(is_query(" UPDATE t SET b = 1") && !is_query("PRAGMA user_version"));
    }
}
