//! SQLite-specific tests: the behaviour suite on this backend, online backup, reopening
//! and migrations.

use std::sync::Arc;

use super::*;
use crate::store::suite::msg;

crate::store::suite::store_suite!(|| async {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path(), Durability::Full).unwrap());
    Some((dir, store))
});

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
        let ordered = NewMessage {
            device: "phone".into(),
            send_seq: 1,
            ..msg("alice", "bob", 2)
        };
        store.store_message(ordered).await.unwrap();
    }
    let store = SqliteStore::open(dir.path(), Durability::Full).unwrap();
    assert_eq!(store.head_seq("bob").await.unwrap(), 2);
    assert_eq!(
        store.next_send_seq("alice", "phone").await.unwrap(),
        2,
        "the send order survives a restart"
    );
    assert!(
        store
            .store_message(msg("alice", "bob", 1))
            .await
            .unwrap()
            .duplicate
    );
}

#[test]
fn sqlite_errors_are_sorted_by_cause() {
    let err = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
    assert!(matches!(
        StoreError::from(err(rusqlite::ffi::SQLITE_FULL)),
        StoreError::Io(_)
    ));
    assert!(matches!(
        StoreError::from(err(rusqlite::ffi::SQLITE_IOERR)),
        StoreError::Io(_)
    ));
    assert!(matches!(
        StoreError::from(err(rusqlite::ffi::SQLITE_CORRUPT)),
        StoreError::Corrupt(_)
    ));
    assert!(matches!(
        StoreError::from(err(rusqlite::ffi::SQLITE_CONSTRAINT)),
        StoreError::Database(_)
    ));
    assert!(
        StoreError::from(err(rusqlite::ffi::SQLITE_FULL))
            .to_string()
            .starts_with("storage I/O failed"),
        "a full disk is not logged as a corrupt row"
    );
}

#[tokio::test]
async fn the_conversation_index_holds_message_entries_and_serves_every_conversation_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Durability::Full).unwrap();
    store.store_message(msg("alice", "bob", 1)).await.unwrap();
    // Bob's device stores it: a DELIVERED receipt entry joins alice's timeline.
    assert_eq!(
        store.ack_delivered("bob", "phone", 1).await.unwrap().len(),
        1
    );
    let conn = rusqlite::Connection::open(dir.path().join("tern.db")).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT COUNT(*) FROM timeline WHERE user = 'alice'"),
        2
    );
    // The index leaves the receipt out: reading through it without the message
    // condition has no plan, and with it finds the one message entry.
    assert!(
        conn.prepare(
            "SELECT COUNT(*) FROM timeline INDEXED BY timeline_by_conversation WHERE user = 'alice'"
        )
        .is_err()
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM timeline INDEXED BY timeline_by_conversation
             WHERE user = 'alice' AND message_id IS NOT NULL"
        ),
        1
    );
    // Each read of one conversation (unread count, newly read senders, a page of
    // history, the summaries' last messages) goes through the index: it is named, so a
    // query it cannot serve fails to prepare.
    for tail in [
        "AND t.seq > ?4 AND m.sender != ?1",
        "AND t.seq > ?4 AND t.seq <= ?5 AND m.sender != ?1 GROUP BY m.sender",
        "AND t.seq < ?4 ORDER BY t.seq DESC LIMIT ?5",
        "ORDER BY t.seq DESC LIMIT ?4",
    ] {
        let sql = format!(
            "EXPLAIN QUERY PLAN SELECT m.id FROM {} {tail}",
            timeline::CONVERSATION_ENTRIES
        );
        let mut stmt = conn.prepare(&sql).unwrap();
        let plan: Vec<String> = stmt
            .query_map(
                rusqlite::params_from_iter(std::iter::repeat_n("x", stmt.parameter_count())),
                |r| r.get(3),
            )
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("INDEX timeline_by_conversation")),
            "{tail}: {plan:?}"
        );
    }
}

#[tokio::test]
async fn a_store_from_before_migration_6_gets_the_messages_only_index_and_keeps_its_entries() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SqliteStore::open(dir.path(), Durability::Full).unwrap();
        store.store_message(msg("alice", "bob", 1)).await.unwrap();
        store.ack_delivered("bob", "phone", 1).await.unwrap();
    }
    // Back to the schema of migration 5: the index over every entry.
    let conn = rusqlite::Connection::open(dir.path().join("tern.db")).unwrap();
    conn.execute_batch(
        "DROP INDEX timeline_by_conversation;
         CREATE INDEX timeline_by_conversation ON timeline (user, conv_kind, conversation, seq);
         PRAGMA user_version = 5;",
    )
    .unwrap();
    drop(conn);
    let store = SqliteStore::open(dir.path(), Durability::Full).unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("tern.db")).unwrap();
    let sql: String = conn
        .query_row(
            "SELECT sql FROM sqlite_schema WHERE name = 'timeline_by_conversation'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(sql.ends_with("WHERE message_id IS NOT NULL"), "{sql}");
    let page = store.timeline("alice", 0, 0, 10).await.unwrap();
    assert_eq!(page.entries.len(), 2, "the message and the receipt");
    let summaries = store.summaries("alice", 5, 10).await.unwrap();
    assert_eq!(summaries.conversations[0].last.len(), 1);
}
