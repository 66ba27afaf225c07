//! `tern-server import-sqlite`: copies a SQLite data directory into an empty PostgreSQL
//! store, table by table in one transaction (all or nothing), keeping every id, seq and
//! the store generation, so clients of the old server see the same store (no restore,
//! no renumbering) when they reconnect to a server on PostgreSQL.

use std::path::Path;

use deadpool_postgres::GenericClient;
use rusqlite::OpenFlags;
use tokio_postgres::types::ToSql;

use super::{PgSettings, StoreError, schema};

/// Rows copied per statement.
const CHUNK: usize = 5000;

/// Column types of a copied table.
#[derive(Clone, Copy)]
enum Ty {
    Text,
    Big,
    Int,
    Bytes,
    Bool,
}

/// One column's values for a chunk.
enum Col {
    Text(Vec<Option<String>>),
    Big(Vec<Option<i64>>),
    Int(Vec<Option<i32>>),
    Bytes(Vec<Option<Vec<u8>>>),
    Bool(Vec<Option<bool>>),
}

impl Col {
    fn new(ty: Ty) -> Col {
        match ty {
            Ty::Text => Col::Text(vec![]),
            Ty::Big => Col::Big(vec![]),
            Ty::Int => Col::Int(vec![]),
            Ty::Bytes => Col::Bytes(vec![]),
            Ty::Bool => Col::Bool(vec![]),
        }
    }
    fn push(&mut self, row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<()> {
        match self {
            Col::Text(v) => v.push(row.get(i)?),
            Col::Big(v) => v.push(row.get(i)?),
            Col::Int(v) => v.push(row.get(i)?),
            Col::Bytes(v) => v.push(row.get(i)?),
            Col::Bool(v) => v.push(row.get(i)?),
        }
        Ok(())
    }
    fn cast(&self) -> &'static str {
        match self {
            Col::Text(_) => "text[]",
            Col::Big(_) => "bigint[]",
            Col::Int(_) => "integer[]",
            Col::Bytes(_) => "bytea[]",
            Col::Bool(_) => "boolean[]",
        }
    }
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Col::Text(v) => v,
            Col::Big(v) => v,
            Col::Int(v) => v,
            Col::Bytes(v) => v,
            Col::Bool(v) => v,
        }
    }
}

/// A table to copy: its name in both stores, the SQLite columns (in the order of the
/// PostgreSQL ones) and their types.
struct Table {
    name: &'static str,
    sqlite_columns: &'static str,
    pg_columns: &'static str,
    types: &'static [Ty],
    on_conflict: &'static str,
}

use Ty::*;

const TABLES: &[Table] = &[
    Table {
        name: "messages",
        sqlite_columns: "id, sender, client_msg_id, recipient, kind, content_type, body, client_ts, server_ts, sender_seq, recalled",
        pg_columns: "id, sender, client_msg_id, recipient, kind, content_type, body, client_ts, server_ts, sender_seq, recalled",
        types: &[Big, Text, Bytes, Text, Int, Big, Bytes, Big, Big, Big, Bool],
        on_conflict: "",
    },
    Table {
        name: "timeline",
        sqlite_columns: "user, seq, conv_kind, conversation, message_id, receipt, event",
        pg_columns: "uid, seq, conv_kind, conversation, message_id, receipt, event",
        types: &[Text, Big, Int, Text, Big, Bytes, Bytes],
        on_conflict: "",
    },
    Table {
        name: "users",
        sqlite_columns: "user, head_seq, delivered_seq, last_login_ms",
        pg_columns: "uid, head_seq, delivered_seq, last_login_ms",
        types: &[Text, Big, Big, Big],
        on_conflict: "",
    },
    Table {
        name: "conversations",
        sqlite_columns: "user, conv_kind, conversation, latest_seq, unread",
        pg_columns: "uid, conv_kind, conversation, latest_seq, unread",
        types: &[Text, Int, Text, Big, Big],
        on_conflict: "",
    },
    Table {
        name: "devices",
        sqlite_columns: "user, device, delivered_seq, send_seq",
        pg_columns: "uid, device, delivered_seq, send_seq",
        types: &[Text, Text, Big, Big],
        on_conflict: "",
    },
    Table {
        name: "groups",
        sqlite_columns: "id, name, owner, created_ms, large",
        pg_columns: "id, name, owner, created_ms, large",
        types: &[Text, Text, Text, Big, Bool],
        on_conflict: "",
    },
    Table {
        name: "group_members",
        sqlite_columns: "grp, user, joined",
        pg_columns: "grp, uid, joined",
        types: &[Text, Text, Big],
        on_conflict: "",
    },
    Table {
        name: "log_joins",
        sqlite_columns: "grp, user, seq",
        pg_columns: "grp, uid, seq",
        types: &[Text, Text, Big],
        on_conflict: "",
    },
    Table {
        name: "read_marks",
        sqlite_columns: "user, conv_kind, conversation, up_to_seq",
        pg_columns: "uid, conv_kind, conversation, up_to_seq",
        types: &[Text, Int, Text, Big],
        on_conflict: "",
    },
    Table {
        name: "push_tokens",
        sqlite_columns: "user, device, platform, provider, token",
        pg_columns: "uid, device, platform, provider, token",
        types: &[Text, Text, Int, Text, Text],
        on_conflict: "",
    },
    Table {
        name: "webhook_outbox",
        sqlite_columns: "id, hook, payload, attempts, next_at_ms",
        pg_columns: "id, hook, payload, attempts, next_at_ms",
        types: &[Big, Text, Bytes, Int, Big],
        on_conflict: "",
    },
    Table {
        name: "meta",
        sqlite_columns: "key, value",
        pg_columns: "key, value",
        types: &[Text, Big],
        on_conflict: " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    },
    Table {
        name: "restore_points",
        sqlite_columns: "owner, seq",
        pg_columns: "owner, seq",
        types: &[Text, Big],
        on_conflict: "",
    },
];

/// What an import copied, per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportReport {
    /// (table, rows) in copy order.
    pub tables: Vec<(&'static str, u64)>,
}

/// Copies the SQLite store in `data_dir` into the (migrated, empty) PostgreSQL store of
/// `settings`. Refuses a database that already holds messages or users. The SQLite
/// file is read in one read transaction (a consistent snapshot); stop the old server
/// first so nothing it acknowledges after the snapshot is left behind.
pub async fn import_sqlite(
    data_dir: &Path,
    settings: &PgSettings,
) -> Result<ImportReport, StoreError> {
    let path = data_dir.join("tern.db");
    if !path.exists() {
        return Err(StoreError::Config(format!(
            "no SQLite store at {}",
            path.display()
        )));
    }
    let mut lite = rusqlite::Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let version: i64 = lite.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 5 {
        return Err(StoreError::Config(format!(
            "{} is at migration {version}: start a current tern-server on it once (it migrates), then import",
            path.display()
        )));
    }
    let (pool, described) = schema::pool(settings)?;
    let mut pg = schema::connect(&pool, &described).await?;
    schema::migrate(&mut pg).await?;
    let tx = pg.transaction().await?;
    let used: i64 = tx
        .query_one(
            "SELECT (SELECT COUNT(*) FROM messages) + (SELECT COUNT(*) FROM users)",
            &[],
        )
        .await?
        .get(0);
    if used > 0 {
        return Err(StoreError::Config(format!(
            "the PostgreSQL store at {described} is not empty: import into a new database"
        )));
    }
    let snapshot = lite.transaction()?;
    let mut report = ImportReport { tables: vec![] };
    for table in TABLES {
        let copied = copy_table(&snapshot, &tx, table).await?;
        tracing::info!(table = table.name, rows = copied, "imported");
        report.tables.push((table.name, copied));
    }
    for (table, seq) in [
        ("messages", "messages_id_seq"),
        ("webhook_outbox", "webhook_outbox_id_seq"),
    ] {
        tx.execute(
            &format!("SELECT setval('{seq}', GREATEST((SELECT MAX(id) FROM {table}), 1))"),
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(report)
}

async fn copy_table(
    lite: &rusqlite::Transaction<'_>,
    pg: &deadpool_postgres::Transaction<'_>,
    table: &Table,
) -> Result<u64, StoreError> {
    let casts: Vec<String> = table
        .types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("${}::{}", i + 1, Col::new(*t).cast()))
        .collect();
    let insert = format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest({}){}",
        table.name,
        table.pg_columns,
        casts.join(", "),
        table.on_conflict
    );
    let statement = pg.prepare_cached(&insert).await?;
    let mut select = lite.prepare(&format!(
        "SELECT {} FROM {}",
        table.sqlite_columns, table.name
    ))?;
    let mut rows = select.query([])?;
    let mut total = 0u64;
    loop {
        let mut cols: Vec<Col> = table.types.iter().map(|t| Col::new(*t)).collect();
        let mut n = 0;
        while n < CHUNK {
            let Some(row) = rows.next()? else { break };
            for (i, col) in cols.iter_mut().enumerate() {
                col.push(row, i)?;
            }
            n += 1;
        }
        if n == 0 {
            break;
        }
        let params: Vec<&(dyn ToSql + Sync)> = cols.iter().map(Col::param).collect();
        pg.execute(&statement, &params).await?;
        total += n as u64;
        if n < CHUNK {
            break;
        }
    }
    Ok(total)
}
