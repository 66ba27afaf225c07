//! The local schema: numbered migrations, one SQL file each in `migrations/`, applied in
//! order and recorded in `PRAGMA user_version`.

use rusqlite::Connection;

use super::DbError;

/// The schema, one file per migration; a released migration is never edited, a
/// change is a new file.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_messages_outbox_conversations.sql"),
    include_str!("migrations/0002_receipts_by_status.sql"),
    include_str!("migrations/0003_recall_reads_history.sql"),
    include_str!("migrations/0004_large_group_logs.sql"),
    include_str!("migrations/0005_outbox_send_order.sql"),
    include_str!("migrations/0006_order_by_server_id.sql"),
    include_str!("migrations/0007_unread_index.sql"),
];

/// Applies the migrations the database has not seen yet, each in its own transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
