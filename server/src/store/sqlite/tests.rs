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
