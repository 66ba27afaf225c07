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

/// The writer never checkpoints (`wal_autocheckpoint = 0`); the checkpointer thread
/// does, so the WAL is reused instead of growing with everything ever written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_keeps_the_wal_from_growing() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), Durability::Full).unwrap();
    let wal = dir.path().join("tern.db-wal");
    let mut id = 0;
    let mut round = || {
        let store = &store;
        let start = id;
        id += 300;
        async move {
            let writes = (start..start + 300u32).map(|i| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&i.to_be_bytes());
                store.store_message(NewMessage {
                    client_msg_id: tern_protocol::ids::ClientMsgId(id),
                    ..msg("alice", "bob", 0)
                })
            });
            for r in futures_util::future::join_all(writes).await {
                r.unwrap();
            }
            // More than the checkpointer's interval: it has run in between.
            tokio::time::sleep(checkpoint::INTERVAL * 3).await;
        }
    };
    round().await;
    let first = std::fs::metadata(&wal).unwrap().len();
    for _ in 0..6 {
        round().await;
    }
    let after = std::fs::metadata(&wal).unwrap().len();
    assert!(first > 0);
    assert!(
        after < first * 3,
        "the WAL is reused: {first} bytes after the first round, {after} after seven"
    );
    assert_eq!(store.head_seq("bob").await.unwrap(), 2100);
}
