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

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;
use tern_client::{
    Client, ClientConfig, ClientEvent, ConnectionState, ConversationKind, EventListener, Message,
    MessageStatus,
};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(name = "tern", version, about = "Tern command-line client")]
struct Cli {
    /// Server QUIC address
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
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
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

struct Forward(mpsc::UnboundedSender<ClientEvent>);

impl EventListener for Forward {
    fn on_event(&self, event: ClientEvent) {
        let _ = self.0.send(event);
    }
}

fn message_json(m: &Message) -> serde_json::Value {
    json!({
        "id": m.server_msg_id,
        "client_id": m.client_msg_id,
        "local_id": m.local_id,
        "from": m.sender,
        "to": m.recipient,
        "conversation": m.conversation,
        "seq": m.seq,
        "text": m.text(),
        "content_type": m.content_type,
        "sent_at": m.server_ts_ms,
        "status": m.status,
        "kind": m.kind,
        "recalled": m.recalled,
        "read_count": m.read_count,
    })
}

fn status_mark(s: &MessageStatus) -> String {
    match s {
        MessageStatus::Pending => "…".into(),
        MessageStatus::Sent => "✓".into(),
        MessageStatus::Delivered => "✓✓".into(),
        MessageStatus::Read => "✓✓ read".into(),
        MessageStatus::Failed { reason } => format!("✗ {reason}"),
    }
}

fn print_message(m: &Message) {
    let text = m.text().map_or_else(
        || format!("<{} bytes, type {}>", m.body.len(), m.content_type),
        str::to_owned,
    );
    let text = if m.recalled {
        "(recalled)".to_owned()
    } else {
        text
    };
    if m.outgoing && m.kind == ConversationKind::Group && m.read_count > 0 {
        println!(
            "[me → {}] {text}  {} read by {}",
            m.recipient,
            status_mark(&m.status),
            m.read_count
        );
    } else if m.outgoing {
        println!("[me → {}] {text}  {}", m.recipient, status_mark(&m.status));
    } else if m.kind == ConversationKind::Group {
        println!("[{} in {}] {text}", m.sender, m.conversation);
    } else {
        println!("[{}] {text}", m.sender);
    }
}

struct Session {
    client: Client,
    events: mpsc::UnboundedReceiver<ClientEvent>,
}

impl Session {
    async fn start(cli: &Cli) -> Result<Session, String> {
        let user = cli
            .user
            .clone()
            .ok_or("--user is required (or TERN_USER)")?;
        let token = cli.token.clone().ok_or("--token is required (or TERN_TOKEN); in development: tern-server token --dev --user <user>")?;
        let mut config = ClientConfig::new(
            cli.server.clone(),
            cli.data.clone(),
            cli.device.clone().unwrap_or(format!("cli-{user}")),
        );
        let ca = cli
            .ca
            .clone()
            .or_else(|| Some(PathBuf::from("tern-data/dev-cert.pem")).filter(|p| p.exists()));
        if let Some(path) = ca {
            config.ca_pem = Some(
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            );
        }
        let client = Client::new(config).map_err(|e| e.to_string())?;
        let (tx, events) = mpsc::unbounded_channel();
        client.set_listener(Arc::new(Forward(tx)));
        client.login(&user, &token).map_err(|e| e.to_string())?;
        Ok(Session { client, events })
    }

    /// Waits until connected and caught up (or a terminal state).
    async fn ready(&mut self, timeout: Duration) -> Result<(), String> {
        let state = self
            .client
            .wait_for_state(timeout, |s| {
                matches!(
                    s,
                    ConnectionState::Connected
                        | ConnectionState::KickedOut { .. }
                        | ConnectionState::LoginFailed { .. }
                )
            })
            .await;
        match state {
            Some(ConnectionState::Connected) => Ok(()),
            Some(other) => Err(format!("cannot connect: {other:?}")),
            None => Err(format!(
                "cannot connect to the server within {}s (state {:?})",
                timeout.as_secs(),
                self.client.connection_state()
            )),
        }
    }

    /// Waits for the catch-up sync to finish (a quiet moment after the last progress).
    async fn synced(&mut self) {
        let quiet = Duration::from_millis(400);
        loop {
            match tokio::time::timeout(quiet, self.events.recv()).await {
                Ok(Some(ClientEvent::SyncProgress { stored, head })) if stored >= head => {}
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return,
            }
        }
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
    };
    s.client.shutdown();
    code
}

/// Connects, then runs `f` (a request that needs the server).
async fn request(
    s: &mut Session,
    f: impl FnOnce(&Client) -> Result<(), tern_client::ClientError>,
) -> ExitCode {
    if let Err(e) = s.ready(Duration::from_secs(15)).await {
        return fail(e);
    }
    match f(&s.client) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

async fn read(s: &mut Session, kind: ConversationKind, with: &str) -> ExitCode {
    if let Err(e) = s.ready(Duration::from_secs(15)).await {
        return fail(e);
    }
    s.synced().await;
    if let Err(e) = s.client.mark_read(kind, with) {
        return fail(e);
    }
    // The mark is queued durably; wait until the server has it so the other devices
    // and the sender learn of it now, not at the next login.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.client.unsent_read_marks().unwrap_or(0) > 0 {
        if tokio::time::Instant::now() > deadline {
            return fail(
                "the server did not confirm the read mark (it is sent again at the next login)",
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match s.client.total_unread() {
        Ok(n) => {
            println!("marked {with} read (total unread now {n})");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn print_group(g: &tern_client::GroupInfo) {
    println!(
        "{}  {:?}  owner {}  {} members{}: {}",
        g.id,
        g.name,
        g.owner,
        g.members.len(),
        if g.large { " (large)" } else { "" },
        g.members.join(",")
    );
}

async fn group(s: &mut Session, cmd: &GroupCmd) -> ExitCode {
    request(s, |c| {
        match cmd {
            GroupCmd::Create {
                name,
                members,
                large: false,
            } => print_group(&c.create_group(name, members)?),
            GroupCmd::Create {
                name,
                members,
                large: true,
            } => print_group(&c.create_large_group(name, members)?),
            GroupCmd::Add { group, members } => print_group(&c.add_group_members(group, members)?),
            GroupCmd::Remove { group, members } => {
                print_group(&c.remove_group_members(group, members)?)
            }
            GroupCmd::Leave { group } => {
                c.leave_group(group)?;
                println!("left {group}");
            }
            GroupCmd::Info { group } => print_group(&c.group_info(group)?),
            GroupCmd::List => c.groups()?.iter().for_each(print_group),
        }
        Ok(())
    })
    .await
}

async fn send(
    s: &mut Session,
    kind: ConversationKind,
    to: &str,
    text: &str,
    count: Option<u32>,
    timeout: Duration,
) -> ExitCode {
    let texts: Vec<String> = match count {
        Some(n) => (1..=n).map(|i| format!("{text} {i}")).collect(),
        None => vec![text.to_owned()],
    };
    // Messages left in the outbox by an earlier run (say, a killed one) go out too.
    let mut waiting: std::collections::HashMap<i64, Message> = match s.client.outbox() {
        Ok(left) => left.into_iter().map(|m| (m.local_id, m)).collect(),
        Err(e) => return fail(e),
    };
    if !waiting.is_empty() {
        eprintln!(
            "tern: {} message(s) left from an earlier run will be sent first",
            waiting.len()
        );
    }
    for t in &texts {
        match s.client.send_to(kind, to, 0, t.as_bytes()) {
            Ok(m) => {
                waiting.insert(m.local_id, m);
            }
            Err(e) => return fail(e),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while !waiting.is_empty() {
        let ev = match tokio::time::timeout_at(deadline, s.events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => return fail("client stopped"),
            Err(_) => {
                return fail(format!(
                    "{} message(s) not stored within {}s (they stay in the outbox)",
                    waiting.len(),
                    timeout.as_secs()
                ));
            }
        };
        match ev {
            ClientEvent::MessageStatusChanged {
                local_id,
                status: MessageStatus::Sent,
            } if waiting.contains_key(&local_id) => {
                waiting.remove(&local_id);
                if let Ok(Some(m)) = s.client.message(local_id) {
                    println!(
                        "sent {} server_id={} seq={}",
                        m.text().unwrap_or(""),
                        m.server_msg_id.unwrap_or(0),
                        m.seq.unwrap_or(0)
                    );
                }
            }
            ClientEvent::MessageStatusChanged {
                local_id,
                status: MessageStatus::Failed { reason },
            } if waiting.contains_key(&local_id) => {
                return fail(format!("message {local_id} failed: {reason}"));
            }
            ClientEvent::ConnectionStateChanged(
                st @ (ConnectionState::LoginFailed { .. } | ConnectionState::KickedOut { .. }),
            ) => {
                return fail(format!("{st:?}"));
            }
            _ => {}
        }
    }
    ExitCode::SUCCESS
}

async fn listen(
    s: &mut Session,
    count: Option<u64>,
    timeout: Option<Duration>,
    json: bool,
) -> ExitCode {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    if count == Some(0) {
        return ExitCode::SUCCESS;
    }
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, s.events.recv()).await.ok(),
                None => Some(s.events.recv().await),
            }
        };
        let ev = tokio::select! {
            ev = next => ev,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        match ev {
            None => return fail(format!("timed out after {seen} message(s)")),
            Some(None) => return fail("client stopped"),
            Some(Some(ClientEvent::MessageReceived(m))) => {
                if json {
                    let _ = writeln!(stdout, "{}", message_json(&m));
                } else {
                    print_message(&m);
                }
                let _ = stdout.flush();
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    return ExitCode::SUCCESS;
                }
            }
            Some(Some(ClientEvent::ConnectionStateChanged(
                st @ (ConnectionState::LoginFailed { .. } | ConnectionState::KickedOut { .. }),
            ))) => {
                return fail(format!("{st:?}"));
            }
            Some(Some(_)) => {}
        }
    }
}

async fn history(
    s: &mut Session,
    kind: ConversationKind,
    with: &str,
    limit: u32,
    json: bool,
) -> ExitCode {
    let online = match s.ready(Duration::from_secs(15)).await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("tern: {e}; showing local history only");
            false
        }
    };
    s.synced().await;
    let page = if online {
        s.client
            .load_history(kind, with, None, limit)
            .map(|p| p.messages)
    } else {
        s.client.messages(kind, with, None, limit)
    };
    let mut msgs = match page {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    msgs.reverse();
    for m in &msgs {
        if json {
            println!("{}", message_json(m))
        } else {
            print_message(m)
        }
    }
    ExitCode::SUCCESS
}

async fn conversations(s: &mut Session, json: bool) -> ExitCode {
    if let Err(e) = s.ready(Duration::from_secs(15)).await {
        eprintln!("tern: {e}; showing local data only");
    }
    s.synced().await;
    let convs = match s.client.conversations() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    for c in &convs {
        if json {
            println!(
                "{}",
                json!({"id": c.id, "kind": c.kind, "unread": c.unread, "latest_seq": c.latest_seq,
                       "last_message": c.last_message.as_ref().map(message_json)})
            );
        } else {
            let last = c
                .last_message
                .as_ref()
                .and_then(|m| m.text().map(str::to_owned))
                .unwrap_or_default();
            println!("{:<20} unread {:>4}  {last}", c.id, c.unread);
        }
    }
    ExitCode::SUCCESS
}

async fn chat(s: &mut Session, with: &str) -> ExitCode {
    println!("chatting with {with}; type a line and press enter to send, /quit to leave");
    if let Err(e) = s.ready(Duration::from_secs(15)).await {
        eprintln!("tern: {e}; messages will be sent when the connection is back");
    }
    s.synced().await;
    if let Ok(mut recent) = s.client.messages(ConversationKind::Direct, with, None, 20) {
        recent.reverse();
        recent.iter().for_each(print_message);
    }
    let _ = s.client.mark_read(ConversationKind::Direct, with);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) if line.trim() == "/quit" => return ExitCode::SUCCESS,
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => if let Err(e) = s.client.send_text(with, &line) { eprintln!("tern: {e}") },
                Ok(None) | Err(_) => return ExitCode::SUCCESS,
            },
            ev = s.events.recv() => match ev {
                None => return fail("client stopped"),
                Some(ClientEvent::MessageReceived(m)) if m.conversation == with => {
                    print_message(&m);
                    let _ = s.client.mark_read(ConversationKind::Direct, with);
                }
                Some(ClientEvent::MessageReceived(m)) => println!("(new message from {})", m.sender),
                Some(ClientEvent::MessageStatusChanged { local_id, status }) => {
                    if let Ok(Some(m)) = s.client.message(local_id) {
                        if m.conversation == with {
                            println!("  {} {}", status_mark(&status), m.text().unwrap_or(""));
                        }
                    }
                }
                Some(ClientEvent::ConnectionStateChanged(st)) => match st {
                    ConnectionState::Connected => println!("-- connected"),
                    ConnectionState::WaitingToReconnect { delay_ms } => println!("-- connection lost; retrying in {:.1}s", delay_ms as f64 / 1000.0),
                    ConnectionState::KickedOut { text, .. } => return fail(format!("signed out: {text}")),
                    ConnectionState::LoginFailed { code, message } => return fail(format!("login failed: {code} {message}")),
                    _ => {}
                },
                Some(_) => {}
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
