//! Connecting to PostgreSQL and the schema: the pool (TLS with rustls unless the URL
//! says `sslmode=disable`), numbered migrations in `migrations/` applied at start under
//! an advisory lock (two servers starting together apply each once), and clear errors
//! for the ways a start goes wrong: unreachable, wrong credentials, schema newer than
//! the binary.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::SslMode;

use super::StoreError;

/// The schema, one file per migration; a released migration is never edited.
pub(super) const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_schema.sql"),
    include_str!("migrations/0002_hot_paths.sql"),
    include_str!("migrations/0003_write_batches.sql"),
];

/// Key of the advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x0074_6572_6e6d_6967; // "ternmig"

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgSettings {
    /// `postgres://user:password@host:port/db?sslmode=...`
    pub url: String,
    /// Connections for reads and outbox work.
    pub pool_size: usize,
    /// Writer lanes (each one connection; jobs of one user always on the same lane).
    pub writers: usize,
    /// Extra CA certificate (PEM) to trust for TLS to the database.
    pub ca_file: Option<PathBuf>,
}

impl PgSettings {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PgSettings {
            url: url.into(),
            pool_size: 16,
            writers: 2,
            ca_file: None,
        }
    }
}

/// `host:port/db as user`, for messages (never the password).
pub(super) fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{host}:{port}/{} as {}",
        config.get_dbname().unwrap_or("?"),
        config.get_user().unwrap_or("?")
    )
}

fn tls(ca_file: Option<&PathBuf>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| StoreError::Io(format!("read {}: {e}", path.display())))?;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| StoreError::Config(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| StoreError::Config(format!("{}: {e}", path.display())))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// The connection pool for `settings` (connects lazily).
pub(super) fn pool(settings: &PgSettings) -> Result<(Pool, String), StoreError> {
    let config = tokio_postgres::Config::from_str(&settings.url)
        .map_err(|e| StoreError::Config(format!("store URL: {e}")))?;
    let described = describe(&config);
    let manager_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = if config.get_ssl_mode() == SslMode::Disable {
        Manager::from_config(config, tokio_postgres::NoTls, manager_config)
    } else {
        Manager::from_config(config, tls(settings.ca_file.as_ref())?, manager_config)
    };
    let pool = Pool::builder(manager)
        .max_size(settings.pool_size + settings.writers)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Config(format!("store pool: {e}")))?;
    Ok((pool, described))
}

/// A connection, with the reason in words when there is none.
pub(super) async fn connect(pool: &Pool, described: &str) -> Result<Object, StoreError> {
    pool.get().await.map_err(|e| {
        use deadpool_postgres::PoolError;
        let cause = match &e {
            PoolError::Backend(be) => match be.as_db_error() {
                Some(db)
                    if matches!(
                        *db.code(),
                        tokio_postgres::error::SqlState::INVALID_PASSWORD
                            | tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    ) =>
                {
                    return StoreError::AccessDenied(format!(
                        "PostgreSQL at {described} refused the credentials: {}",
                        db.message()
                    ));
                }
                Some(db) => db.message().to_owned(),
                None => std::error::Error::source(be)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| be.to_string()),
            },
            PoolError::Timeout(_) => "timed out".into(),
            other => other.to_string(),
        };
        StoreError::Unavailable(format!("cannot reach PostgreSQL at {described}: {cause}"))
    })
}

/// Applies the migrations this binary has and the database lacks; returns how many.
pub(super) async fn migrate(conn: &mut Object) -> Result<usize, StoreError> {
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .await?;
    let outcome = apply_missing(conn).await;
    conn.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .await?;
    outcome
}

async fn apply_missing(conn: &mut Object) -> Result<usize, StoreError> {
    conn.batch_execute(
        "CREATE TABLE IF NOT EXISTS tern_migrations (version INTEGER PRIMARY KEY, applied_ms BIGINT NOT NULL)",
    )
    .await?;
    let version = conn
        .query_one("SELECT COALESCE(MAX(version), 0) FROM tern_migrations", &[])
        .await?
        .get::<_, i32>(0) as usize;
    if version > MIGRATIONS.len() {
        return Err(StoreError::SchemaTooNew {
            found: version,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO tern_migrations (version, applied_ms) VALUES ($1, $2)",
            &[&((i + 1) as i32), &(tern_protocol::unix_ms() as i64)],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(migration = i + 1, "applied PostgreSQL store migration");
    }
    Ok(MIGRATIONS.len() - version)
}
