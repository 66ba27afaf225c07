//! The `tern-server` command line.
//!
//! * `tern-server [--config tern.toml] [--quic ADDR] [--http ADDR] [--data DIR] [--dev] ...`
//!   runs the server until SIGTERM or Ctrl-C, then shuts down gracefully.
//! * `tern-server token --user U [--device D] [--ttl-secs N]` prints a login token signed
//!   with the configured secret (`--dev` uses the public dev secret), and nothing else.
//! * `tern-server backup --data DIR --out FILE` writes a consistent copy of the database
//!   while the server keeps running.
//! * `tern-server config check [--config FILE]` validates the configuration and prints
//!   the effective values, secrets masked.
//! * `tern-server restore --data DIR --from FILE` puts a backup in place (server
//!   stopped) and starts a new store generation (see docs/operations.md).
//! * `tern-server migrate --store postgres://...` applies the PostgreSQL schema.
//! * `tern-server import-sqlite --data DIR --store postgres://...` copies a SQLite store
//!   into an empty PostgreSQL one.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tern_server::config::{Config, DEV_TOKEN_SECRET, LogFormat, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "tern-server",
    version,
    about = "Tern: reliable IM server for weak networks (QUIC)"
)]
struct Cli {
    /// TOML configuration file
    #[arg(long, env = "TERN_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a login token for a user, signed with the configured secret
    Token {
        /// User id
        #[arg(long)]
        user: String,
        /// Bind the token to this device id
        #[arg(long)]
        device: Option<String>,
        /// Bind the token to this platform (android, ios, desktop, web)
        #[arg(long, value_parser = ["android", "ios", "desktop", "web"])]
        platform: Option<String>,
        /// Validity in seconds
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        ttl_secs: u64,
        #[command(flatten)]
        settings: Settings,
    },
    /// Write a consistent copy of the database while the server runs
    Backup {
        /// Output file (must not exist); restore it with `tern-server restore`
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        settings: Settings,
    },
    /// Configuration tools
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Replace the database with a backup (stop the server first) and start a new
    /// store generation, so clients that saw newer data resynchronise. On PostgreSQL
    /// (--store), restore the database with its own tools first, then run this without
    /// --from
    Restore {
        /// The backup file (from `tern-server backup`); SQLite only
        #[arg(long)]
        from: Option<PathBuf>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Print a shell completion script, e.g. `tern-server completions bash >
    /// /etc/bash_completion.d/tern-server`
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Apply the PostgreSQL store's schema migrations (the server also does at start)
    Migrate {
        #[command(flatten)]
        settings: Settings,
    },
    /// Copy a SQLite data directory (--data; stop its server first) into the empty
    /// PostgreSQL store (--store)
    ImportSqlite {
        #[command(flatten)]
        settings: Settings,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration (file, environment, flags) and print the effective
    /// values, secrets masked; exits non-zero with the reason if it is invalid
    Check {
        #[command(flatten)]
        settings: Settings,
    },
}

fn settings(flags: Settings, file: &Option<PathBuf>) -> anyhow::Result<Settings> {
    Ok(match file {
        Some(path) => flags.over(Settings::from_file(path)?),
        None => flags,
    })
}

/// The PostgreSQL settings of `s`, or why there are none.
fn postgres_settings(s: Settings) -> anyhow::Result<tern_server::store::postgres::PgSettings> {
    anyhow::ensure!(
        s.store_url.as_deref().is_some_and(|u| !u.is_empty()),
        "no PostgreSQL store configured (set --store, TERN_STORE or store_url)"
    );
    let mut s = s;
    // Only the store matters here: resolve the rest leniently as a dev configuration.
    s.dev = Some(true);
    s.tls_cert = None;
    s.tls_key = None;
    Config::resolve(s)?
        .store
        .ok_or_else(|| anyhow::anyhow!("no PostgreSQL store configured"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio")
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quinn=warn,rustls=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Completions { shell }) = cli.command {
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "tern-server",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    if let Some(Command::Token {
        user,
        device,
        platform,
        ttl_secs,
        settings: flags,
    }) = cli.command
    {
        let s = settings(flags.over(cli.settings), &cli.config)?;
        let secret = match (s.token_secret, s.dev.unwrap_or(false)) {
            (Some(t), _) => t.into_bytes(),
            (None, true) => DEV_TOKEN_SECRET.as_bytes().to_vec(),
            (None, false) => anyhow::bail!(
                "no token_secret configured (set --token-secret, TERN_TOKEN_SECRET, the config file, or use --dev)"
            ),
        };
        anyhow::ensure!(
            tern_protocol::is_valid_user_id(&user),
            "invalid user id {user:?}"
        );
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + ttl_secs;
        let claims = tern_server::auth::Claims {
            sub: user,
            exp,
            dev: device,
            plat: platform,
        };
        println!("{}", tern_server::auth::mint_claims(&secret, &claims));
        return Ok(());
    }
    if let Some(Command::Backup {
        out,
        settings: flags,
    }) = cli.command
    {
        let s = settings(flags.over(cli.settings), &cli.config)?;
        let data = s.data.unwrap_or_else(|| PathBuf::from("tern-data"));
        anyhow::ensure!(!out.exists(), "{} exists; choose a new file", out.display());
        tern_server::store::sqlite::SqliteStore::backup(&data, &out)
            .with_context(|| format!("back up {}", data.display()))?;
        eprintln!(
            "backed up {} to {}",
            data.join("tern.db").display(),
            out.display()
        );
        return Ok(());
    }
    if let Some(Command::Config(ConfigCommand::Check { settings: flags })) = cli.command {
        let config = Config::resolve(settings(flags.over(cli.settings), &cli.config)?)?;
        let lines = config.describe();
        let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in lines {
            println!("{key:width$} = {value}");
        }
        eprintln!("configuration is valid");
        return Ok(());
    }
    if let Some(Command::Restore {
        from,
        settings: flags,
    }) = cli.command
    {
        let s = settings(flags.over(cli.settings), &cli.config)?;
        if s.store_url.as_deref().is_some_and(|u| !u.is_empty()) {
            anyhow::ensure!(
                from.is_none(),
                "--from is for the SQLite store; restore PostgreSQL with its own tools, then run `tern-server restore --store ...` without --from"
            );
            let pg = postgres_settings(s)?;
            let generation =
                runtime()?.block_on(tern_server::store::postgres::PgStore::mark_restored(&pg))?;
            eprintln!(
                "{}: marked as restored (store generation {generation}); clients resynchronise at their next login",
                tern_server::store::postgres::masked_url(&pg.url)
            );
            return Ok(());
        }
        let from = from.context("--from: the backup file to restore")?;
        let data = s.data.unwrap_or_else(|| PathBuf::from("tern-data"));
        let generation = tern_server::store::sqlite::SqliteStore::restore(&data, &from)
            .with_context(|| format!("restore {} into {}", from.display(), data.display()))?;
        eprintln!(
            "restored {} into {} (store generation {generation}); the replaced files are beside it",
            from.display(),
            data.join("tern.db").display(),
        );
        return Ok(());
    }
    if let Some(Command::Migrate { settings: flags }) = cli.command {
        let s = settings(flags.over(cli.settings), &cli.config)?;
        let pg = postgres_settings(s)?;
        let applied = runtime()?.block_on(tern_server::store::postgres::PgStore::migrate(&pg))?;
        eprintln!(
            "{}: {applied} migration(s) applied; the schema is current",
            tern_server::store::postgres::masked_url(&pg.url)
        );
        return Ok(());
    }
    if let Some(Command::ImportSqlite { settings: flags }) = cli.command {
        let s = settings(flags.over(cli.settings), &cli.config)?;
        let data = s.data.clone().unwrap_or_else(|| PathBuf::from("tern-data"));
        let pg = postgres_settings(s)?;
        let report = runtime()?
            .block_on(tern_server::store::postgres::import_sqlite(&data, &pg))
            .with_context(|| format!("import {}", data.join("tern.db").display()))?;
        for (table, rows) in &report.tables {
            println!("{table:16} {rows}");
        }
        eprintln!(
            "imported {} into {}",
            data.join("tern.db").display(),
            tern_server::store::postgres::masked_url(&pg.url)
        );
        return Ok(());
    }
    let config = Config::resolve(settings(cli.settings, &cli.config)?)?;
    init_logging(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start tokio")?;
    runtime.block_on(async move {
        let dev = config.dev;
        let server = tern_server::server::start(config).await?;
        // Start-up lines for people and scripts. A closed stdout must not stop the
        // server, so write errors are ignored (println! would panic).
        let mut out = std::io::stdout();
        let _ = writeln!(out, "quic listening on {}", server.quic_addr);
        if let Some(tcp) = server.tcp_addr {
            let _ = writeln!(out, "tcp listening on {tcp}");
        }
        if let Some(ws) = server.ws_addr {
            let _ = writeln!(out, "ws listening on {ws}");
        }
        let _ = writeln!(out, "http listening on {}", server.http_addr);
        if dev {
            let _ = writeln!(out, "dev certificate: {}", server.cert_path.display());
            let _ = writeln!(
                out,
                "dev mode: tokens use the public dev secret; never use --dev in production"
            );
        }
        let _ = out.flush();
        wait_for_signal().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}
