//! Scratch PostgreSQL databases for tests and benchmarks: `TERN_TEST_PG` names a server
//! and a role that may create databases (`postgres://tern:tern@localhost/tern?sslmode=disable`);
//! each call makes a new, empty database there. Without `TERN_TEST_PG` the PostgreSQL
//! tests are skipped with a line on stderr, unless `TERN_REQUIRE_PG=1` (CI sets both),
//! which makes a missing database a failure.

use super::{PgSettings, StoreError, schema};

/// The server to make scratch databases on, or `None` (tests skip) when there is none.
pub fn base_url() -> Option<String> {
    match std::env::var("TERN_TEST_PG") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("TERN_REQUIRE_PG").is_err(),
                "TERN_REQUIRE_PG is set but TERN_TEST_PG is not"
            );
            eprintln!("TERN_TEST_PG is not set: PostgreSQL tests skipped");
            None
        }
    }
}

/// `base` with its database name replaced by `db`.
pub fn with_database(base: &str, db: &str) -> String {
    let (main, query) = match base.split_once('?') {
        Some((m, q)) => (m, format!("?{q}")),
        None => (base, String::new()),
    };
    let root = match main.rsplit_once('/') {
        Some((root, _)) if root.contains("//") && root.len() > root.find("//").unwrap() + 2 => {
            root.to_owned()
        }
        _ => main.to_owned(),
    };
    format!("{root}/{db}{query}")
}

/// Creates a new, empty database on the server of `base` and returns its URL.
pub async fn scratch_database(base: &str) -> Result<String, StoreError> {
    let name = format!("tern_t_{:016x}", rand::random::<u64>());
    let (pool, described) = schema::pool(&PgSettings::new(base))?;
    let conn = schema::connect(&pool, &described).await?;
    conn.batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    Ok(with_database(base, &name))
}

/// A scratch database URL, or `None` when PostgreSQL tests are skipped here.
pub async fn scratch() -> Option<String> {
    let base = base_url()?;
    Some(
        scratch_database(&base)
            .await
            .expect("create a scratch PostgreSQL database"),
    )
}
