//! `tern`: a command-line Tern client, built on the client core.
//!
//! ```text
//! tern --user alice --token T send --to bob --text "hi" [--count N]
//! tern --user bob   --token T listen [--count N] [--timeout SECS] [--json]
//! tern --user bob   --token T history --with alice [--limit N] [--json]
//! tern --user bob   --token T conversations [--json]
//! tern --user bob   --token T chat --with alice
//! tern --user bob   --token T group create --name team --members alice,carol
//! tern --user bob   --token T send --group --to g0123... --text "hi all"
//! tern --user bob   --token T read --with alice
//! tern --user bob   --token T recall --id 42
//! ```
//!
//! Every command logs in (which also syncs what arrived while away) and uses the same
//! local database as an app would (`--data`, one subdirectory per user).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

mod commands;
mod output;
mod session;

use commands::*;
use output::*;
use session::*;
use tern_client::ConversationKind;

#[derive(Debug, Parser)]
#[command(name = "tern", version, about = "Tern command-line client")]
struct Cli {
    /// Server QUIC address; for a cluster several, comma-separated (a.example:7443,b.example:7443)
    #[arg(
        long,
        env = "TERN_SERVER",
        default_value = "127.0.0.1:7443",
        global = true
    )]
    server: String,
    /// PEM certificate to trust [default: tern-data/dev-cert.pem if present, else public roots]
    #[arg(long, env = "TERN_CA", global = true)]
    ca: Option<PathBuf>,
    /// User id
    #[arg(long, env = "TERN_USER", global = true)]
    user: Option<String>,
    /// Login token from the business backend (`tern-server token --dev --user U` in development)
    #[arg(long, env = "TERN_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Local data directory
    #[arg(
        long,
        env = "TERN_DATA",
        default_value = "tern-cli-data",
        global = true
    )]
    data: PathBuf,
    /// Device id [default: cli-<user>]
    #[arg(long, env = "TERN_DEVICE", global = true)]
    device: Option<String>,
    /// How sends travel: in QUIC datagrams with Tern's retransmission (default), or on
    /// the ordered QUIC stream
    #[arg(long, value_enum, default_value = "datagram", global = true)]
    uplink: UplinkArg,
    /// Transport: QUIC first with TLS-over-TCP fallback where UDP is blocked (auto),
    /// QUIC only, TCP only, or WebSocket over TLS (ws)
    #[arg(long, value_enum, default_value = "auto", global = true)]
    transport: TransportArg,
    /// The server's TLS-over-TCP address [default: --server, over TCP]
    #[arg(long, env = "TERN_TCP_SERVER", global = true)]
    tcp_server: Option<String>,
    /// The server's WebSocket address [default: --server's host, port + 1]
    #[arg(long, env = "TERN_WS_SERVER", global = true)]
    ws_server: Option<String>,
    /// An HTTP proxy (host:port, CONNECT) for the TCP and WebSocket transports
    #[arg(long, env = "TERN_HTTP_PROXY", global = true)]
    http_proxy: Option<String>,
    #[command(subcommand)]
    command: Cmd,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TransportArg {
    Auto,
    Quic,
    Tcp,
    Ws,
}

/// `--uplink`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum UplinkArg {
    Datagram,
    Stream,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// When it does not connect: checks the address, the token, QUIC (UDP) and TLS over
    /// TCP each alone, the certificate, the login and the clock, then a short session;
    /// one line per check with the fix (exit 1 if any failed)
    Doctor,
    /// Print a shell completion script, e.g. `tern completions bash >
    /// /etc/bash_completion.d/tern` (no login, no server needed)
    Completions {
        /// bash, zsh, fish, elvish or powershell
        shell: clap_complete::Shell,
    },
    /// Send a text (or N numbered texts) and wait until the server stored them (and
    /// anything an earlier run left in the outbox; `--count 0` sends only that)
    Send {
        /// Recipient user id (or group id with --group)
        #[arg(long)]
        to: String,
        /// `--to` is a group
        #[arg(long)]
        group: bool,
        /// The text
        #[arg(long)]
        text: String,
        /// Send "<text> 1" .. "<text> N"
        #[arg(long)]
        count: Option<u32>,
        /// Give up after this many seconds
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Print received messages; exits after N messages or the timeout (non-zero on timeout)
    Listen {
        /// Exit after this many messages
        #[arg(long)]
        count: Option<u64>,
        /// Exit (with status 1) after this many seconds
        #[arg(long)]
        timeout: Option<u64>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Print the messages of a conversation (after syncing)
    History {
        /// The other user (or group id with --group)
        #[arg(long)]
        with: String,
        /// `--with` is a group
        #[arg(long)]
        group: bool,
        /// Most recent N (older ones are fetched from the server if not held locally)
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// List conversations with unread counts (after syncing)
    Conversations {
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Interactive chat with delivery status
    Chat {
        /// The other user
        #[arg(long)]
        with: String,
    },
    /// Mark a conversation read (on every device; the sender sees it)
    Read {
        /// The other user (or group id with --group)
        #[arg(long)]
        with: String,
        /// `--with` is a group
        #[arg(long)]
        group: bool,
    },
    /// Recall one of your messages (its `local_id`, see `history --json`)
    Recall {
        /// Local id of the message
        #[arg(long)]
        id: i64,
    },
    /// Register this device's push token for offline pushes (empty token removes it)
    PushToken {
        /// Provider passed to the push webhook (apns, fcm, ...)
        #[arg(long)]
        provider: String,
        /// The token
        #[arg(long)]
        token: String,
    },
    /// Groups: create, add, remove, leave, info, list
    #[command(subcommand)]
    Group(GroupCmd),
}

#[derive(Debug, Subcommand)]
enum GroupCmd {
    /// Create a group you own; prints its id
    Create {
        /// Display name
        #[arg(long)]
        name: String,
        /// Members (comma-separated)
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
        /// A large group (read diffusion: beyond the server's normal group limit)
        #[arg(long)]
        large: bool,
    },
    /// Add members
    Add {
        /// Group id
        #[arg(long)]
        group: String,
        /// Members (comma-separated)
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Remove members (owner only)
    Remove {
        /// Group id
        #[arg(long)]
        group: String,
        /// Members (comma-separated)
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Leave a group
    Leave {
        /// Group id
        #[arg(long)]
        group: String,
    },
    /// Show a group
    Info {
        /// Group id
        #[arg(long)]
        group: String,
    },
    /// List your groups
    List,
}

fn kind(group: bool) -> ConversationKind {
    if group {
        ConversationKind::Group
    } else {
        ConversationKind::Direct
    }
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("tern: {msg}");
    ExitCode::FAILURE
}

async fn run(cli: Cli) -> ExitCode {
    let mut s = match Session::start(&cli).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let code = match &cli.command {
        Cmd::Send {
            to,
            group,
            text,
            count,
            timeout,
        } => {
            send(
                &mut s,
                kind(*group),
                to,
                text,
                *count,
                Duration::from_secs(*timeout),
            )
            .await
        }
        Cmd::Listen {
            count,
            timeout,
            json,
        } => listen(&mut s, *count, timeout.map(Duration::from_secs), *json).await,
        Cmd::History {
            with,
            group,
            limit,
            json,
        } => history(&mut s, kind(*group), with, *limit, *json).await,
        Cmd::Read { with, group } => read(&mut s, kind(*group), with).await,
        Cmd::Recall { id } => {
            request(&mut s, |c| {
                c.recall(*id)?;
                println!("recalled {id}");
                Ok(())
            })
            .await
        }
        Cmd::PushToken { provider, token } => {
            request(&mut s, |c| {
                c.register_push_token(provider, token)?;
                println!("push token registered");
                Ok(())
            })
            .await
        }
        Cmd::Group(g) => group(&mut s, g).await,
        Cmd::Conversations { json } => conversations(&mut s, *json).await,
        Cmd::Chat { with } => chat(&mut s, with).await,
        // Both run in `main`, before any login.
        Cmd::Completions { .. } | Cmd::Doctor => ExitCode::SUCCESS,
    };
    s.client.shutdown();
    code
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Doctor = cli.command {
        return doctor(&cli);
    }
    if let Cmd::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut <Cli as clap::CommandFactory>::command(),
            "tern",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    rt.block_on(run(cli))
}

/// `tern doctor`: the checks, one line each, with the fix under a failed or doubtful one.
fn doctor(cli: &Cli) -> ExitCode {
    let (user, token) = match session::credentials(cli) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let config = match session::client_config(cli, &user) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // Its own data directory: the doctor must not touch the user's outbox.
    let scratch = std::env::temp_dir().join(format!("tern-doctor-{}", std::process::id()));
    let config = tern_client::ClientConfig {
        data_dir: scratch.clone(),
        ..config
    };
    let client = match tern_client::Client::new(config) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let checks = client.doctor(&user, &token);
    client.shutdown();
    let _ = std::fs::remove_dir_all(&scratch);
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &checks {
        let mark = match c.status {
            tern_client::CheckStatus::Ok => "✓",
            tern_client::CheckStatus::Warning => "!",
            tern_client::CheckStatus::Failed => "✗",
        };
        println!("{mark} {:width$}  {}", c.name, c.detail);
        if let Some(fix) = &c.fix {
            println!("  {:width$}  fix: {fix}", "");
        }
    }
    if checks
        .iter()
        .any(|c| c.status == tern_client::CheckStatus::Failed)
    {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
