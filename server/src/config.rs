//! Server settings.
//!
//! Every setting can come from a TOML file (`--config tern.toml`), an environment
//! variable (`TERN_<NAME>`) or a flag (`--<name>`); a flag or env var wins over the
//! file, and anything unset takes the default documented on [`Settings`] and in
//! docs/operations.md. [`Settings`] is the raw, all-optional layer that clap and serde
//! fill; [`Config`] is the resolved, validated result the server runs with.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::registry::KickPolicy;
use crate::store::sqlite::Durability;

/// Secret used to sign tokens in `--dev` mode. Public on purpose: never use `--dev`
/// in production.
pub const DEV_TOKEN_SECRET: &str = "tern-dev-secret-do-not-use-in-production";
/// HTTP API key in `--dev` mode when none is configured.
pub const DEV_API_KEY: &str = "tern-dev-api-key";
/// Webhook signing key in `--dev` mode (or when no webhook is configured).
pub const DEV_WEBHOOK_SECRET: &str = "tern-dev-webhook-secret";

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// QUIC's congestion controller (see `tern_protocol::io::Congestion`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum CongestionControl {
    /// BBR: does not read random loss as congestion (weak mobile paths).
    #[default]
    Bbr,
    /// CUBIC, quinn's own default (loss-based).
    Cubic,
}

impl CongestionControl {
    /// The protocol crate's setting.
    pub fn to_protocol(self) -> tern_protocol::io::Congestion {
        match self {
            CongestionControl::Bbr => tern_protocol::io::Congestion::Bbr,
            CongestionControl::Cubic => tern_protocol::io::Congestion::Cubic,
        }
    }
}

/// Retransmission schedule for pushes to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum PushQos {
    /// Tern's adaptive engine (RTO from measured RTT, fast retries, recovery rule).
    #[default]
    Adaptive,
    /// MobileIMSDK's fixed schedule (scan every 5 s, resend what is older than 3 s, give up after 2 resends).
    /// Only for benchmarks that compare the two: it loses messages under loss by design.
    Mobileimsdk,
}

impl PushQos {
    /// The engine configuration this profile stands for.
    pub fn config(self) -> tern_protocol::qos::QosConfig {
        match self {
            PushQos::Adaptive => tern_protocol::qos::QosConfig::default(),
            PushQos::Mobileimsdk => tern_protocol::qos::QosConfig::mobileimsdk(),
        }
    }
}

/// Raw settings: every field optional, filled by file, env and flags.
#[derive(Debug, Clone, Default, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// QUIC listen address [default: 0.0.0.0:7443]
    #[arg(long, env = "TERN_QUIC")]
    pub quic: Option<SocketAddr>,
    /// TLS-over-TCP listen address, the fallback where UDP is blocked, or "off" [default: the QUIC address in --dev, off otherwise]
    #[arg(long, env = "TERN_TCP")]
    pub tcp: Option<String>,
    /// WebSocket (over TLS) listen address, for browsers and networks that pass only HTTPS, or "off" [default: the QUIC address's port + 1 in --dev, off otherwise]
    #[arg(long, env = "TERN_WS")]
    pub ws: Option<String>,
    /// HTTP API listen address [default: 127.0.0.1:7480]
    #[arg(long, env = "TERN_HTTP")]
    pub http: Option<SocketAddr>,
    /// Data directory (database, dev certificate) [default: ./tern-data]
    #[arg(long, env = "TERN_DATA")]
    pub data: Option<PathBuf>,
    /// Development mode: self-signed certificate, public dev token secret and API key
    #[arg(long, env = "TERN_DEV", num_args = 0..=1, default_missing_value = "true")]
    pub dev: Option<bool>,
    /// TLS certificate chain (PEM); required unless --dev
    #[arg(long, env = "TERN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); required unless --dev
    #[arg(long, env = "TERN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// HMAC-SHA256 secret for login tokens (at least 16 bytes); required unless --dev
    #[arg(long, env = "TERN_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Bearer key for the HTTP API; required unless --dev
    #[arg(long, env = "TERN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Which older sessions a new login kicks out [default: per-platform]
    #[arg(long, env = "TERN_KICK_POLICY", value_enum)]
    pub kick_policy: Option<KickPolicy>,
    /// Largest message body in bytes [default: 65536]
    #[arg(long, env = "TERN_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<u32>,
    /// Seconds of silence after which a session is dropped [default: 700]
    #[arg(long, env = "TERN_HEARTBEAT_TIMEOUT_SECS")]
    pub heartbeat_timeout_secs: Option<u64>,
    /// Frames per second a session may send, sustained [default: 50]
    #[arg(long, env = "TERN_RATE_PER_SEC")]
    pub rate_per_sec: Option<u32>,
    /// Burst of frames above the sustained rate [default: 200]
    #[arg(long, env = "TERN_RATE_BURST")]
    pub rate_burst: Option<u32>,
    /// Most concurrent sessions [default: 100000]
    #[arg(long, env = "TERN_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,
    /// Most logins being processed at once; more get SERVER_BUSY [default: 512]
    #[arg(long, env = "TERN_MAX_CONCURRENT_LOGINS")]
    pub max_concurrent_logins: Option<usize>,
    /// Start a new, empty store in place of a 0-byte database file (otherwise refused) [default: false]
    #[arg(long, env = "TERN_CREATE_STORE", num_args = 0..=1, default_missing_value = "true")]
    pub create_store: Option<bool>,
    /// Most connections between handshake and login; more are refused before the handshake [default: 1024]
    #[arg(long, env = "TERN_MAX_UNAUTHENTICATED")]
    pub max_unauthenticated: Option<usize>,
    /// Most sessions one user may hold at once (all devices); a login over it is refused with TOO_MANY_SESSIONS [default: 16]
    #[arg(long, env = "TERN_MAX_SESSIONS_PER_USER")]
    pub max_sessions_per_user: Option<usize>,
    /// Lowest client_version allowed to log in, e.g. "1.2.0" [default: none]
    #[arg(long, env = "TERN_MIN_CLIENT_VERSION")]
    pub min_client_version: Option<String>,
    /// Only accept messages to users who logged in before [default: false]
    #[arg(long, env = "TERN_REQUIRE_KNOWN_RECIPIENT", num_args = 0..=1, default_missing_value = "true")]
    pub require_known_recipient: Option<bool>,
    /// On a path measured lossy, repeat the latest send results in one more datagram
    /// (the uplink's tail under loss; costs bytes only while the path is lossy) [default: true]
    #[arg(long, env = "TERN_LOSS_COPIES", num_args = 0..=1, default_missing_value = "true")]
    pub loss_copies: Option<bool>,
    /// QUIC congestion controller: bbr (random loss is not congestion) or cubic [default: bbr]
    #[arg(long, env = "TERN_CONGESTION")]
    pub congestion: Option<CongestionControl>,
    /// Store durability: full (fsync per commit) or normal [default: full]
    #[arg(long, env = "TERN_DURABILITY")]
    pub durability: Option<Durability>,
    /// PostgreSQL store, e.g. postgres://tern:PASSWORD@db.internal/tern (sslmode=disable for plain TCP); unset = the SQLite store in --data [default: none]
    #[arg(long = "store", env = "TERN_STORE", hide_env_values = true)]
    pub store_url: Option<String>,
    /// PostgreSQL writer lanes (connections writing side by side; a user's writes keep one lane) [default: 2]
    #[arg(long, env = "TERN_STORE_WRITERS")]
    pub store_writers: Option<usize>,
    /// PostgreSQL connections for reads and outbox work [default: 16]
    #[arg(long, env = "TERN_STORE_POOL_SIZE")]
    pub store_pool_size: Option<usize>,
    /// Extra CA certificate (PEM) trusted for TLS to PostgreSQL [default: none; the public web roots]
    #[arg(long, env = "TERN_STORE_CA_FILE")]
    pub store_ca_file: Option<PathBuf>,
    /// Users refused at login (comma-separated)
    #[arg(long, env = "TERN_BANNED_USERS", value_delimiter = ',')]
    pub banned_users: Option<Vec<String>>,
    /// Log format [default: human]
    #[arg(long, env = "TERN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Push retransmission schedule: adaptive, or mobileimsdk (benchmark baseline) [default: adaptive]
    #[arg(long, env = "TERN_PUSH_QOS", value_enum)]
    pub push_qos: Option<PushQos>,
    /// Largest group, in members (write diffusion; see docs/bench/fanout.md) [default: 2000]
    #[arg(long, env = "TERN_MAX_GROUP_MEMBERS")]
    pub max_group_members: Option<usize>,
    /// Largest large group (read diffusion: one log members pull) [default: 100000]
    #[arg(long, env = "TERN_MAX_LARGE_GROUP_MEMBERS")]
    pub max_large_group_members: Option<usize>,
    /// Groups up to this size send per-member READ receipts to senders [default: 100]
    #[arg(long, env = "TERN_GROUP_RECEIPTS_MAX_MEMBERS")]
    pub group_receipts_max_members: Option<usize>,
    /// How long after sending a message its sender may recall it, in seconds [default: 120]
    #[arg(long, env = "TERN_RECALL_WINDOW_SECS")]
    pub recall_window_secs: Option<u64>,
    /// Offline push webhook (your APNs/FCM bridge); unset = no offline pushes
    #[arg(long, env = "TERN_PUSH_WEBHOOK_URL")]
    pub push_webhook_url: Option<String>,
    /// Call the push webhook when no device ACKed a message within this many ms [default: 3000]
    #[arg(long, env = "TERN_PUSH_WEBHOOK_DELAY_MS")]
    pub push_webhook_delay_ms: Option<u64>,
    /// Service accounts (comma-separated): messages to them go to the service webhook
    #[arg(long, env = "TERN_SERVICE_ACCOUNTS", value_delimiter = ',')]
    pub service_accounts: Option<Vec<String>>,
    /// Where messages to service accounts are POSTed (c2s webhook)
    #[arg(long, env = "TERN_SERVICE_WEBHOOK_URL")]
    pub service_webhook_url: Option<String>,
    /// HMAC-SHA256 key that signs every webhook request (X-Tern-Signature)
    #[arg(long, env = "TERN_WEBHOOK_SECRET")]
    pub webhook_secret: Option<String>,
    /// Cluster: NATS URL(s), comma-separated; set, this node routes pushes to the other nodes on the same PostgreSQL store [default: none, a single node]
    #[arg(long, env = "TERN_NATS")]
    pub nats: Option<String>,
    /// Cluster: this node's name, unique in the cluster [default: the host name and QUIC port]
    #[arg(long, env = "TERN_NODE")]
    pub node: Option<String>,
    /// Cluster: this node's number 0-65535, unique in the cluster; the first two bytes of its QUIC connection IDs (load balancers route on them) [default: 0]
    #[arg(long, env = "TERN_NODE_NUMBER")]
    pub node_number: Option<u16>,
    /// Secret (at least 32 bytes) from which the QUIC stateless-reset and connection-ID keys are derived; every node of a cluster needs the same [default: quic-reset.key in the data directory]
    #[arg(long, env = "TERN_QUIC_RESET_KEY", hide_env_values = true)]
    pub quic_reset_key: Option<String>,
}

macro_rules! overlay {
    ($top:expr, $base:expr; $($field:ident),+ $(,)?) => {
        Settings { $($field: $top.$field.or($base.$field)),+ }
    };
}

impl Settings {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Settings> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read config {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("invalid config {}: {e}", path.display()))
    }

    /// `self` where set, else `base`.
    pub fn over(self, base: Settings) -> Settings {
        overlay!(self, base; quic, tcp, ws, http, data, dev, tls_cert, tls_key, token_secret, api_key, kick_policy,
            max_body_bytes, heartbeat_timeout_secs, rate_per_sec, rate_burst, max_sessions,
            max_concurrent_logins, create_store, max_unauthenticated, max_sessions_per_user, min_client_version, require_known_recipient, loss_copies, congestion, durability,
            store_url, store_writers, store_pool_size, store_ca_file, banned_users, log_format, push_qos, max_group_members, max_large_group_members, group_receipts_max_members,
            recall_window_secs, push_webhook_url, push_webhook_delay_ms, service_accounts,
            service_webhook_url, webhook_secret, nats, node, node_number, quic_reset_key)
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// QUIC listen address.
    pub quic: SocketAddr,
    /// TLS-over-TCP listen address (`None`: no TCP fallback).
    pub tcp: Option<SocketAddr>,
    /// WebSocket-over-TLS listen address (`None`: none).
    pub ws: Option<SocketAddr>,
    /// HTTP listen address.
    pub http: SocketAddr,
    /// Data directory.
    pub data: PathBuf,
    /// Development mode.
    pub dev: bool,
    /// Certificate and key files (None in dev mode: generated).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Token signing secret.
    pub token_secret: Vec<u8>,
    /// HTTP API bearer key.
    pub api_key: String,
    /// Kickout policy.
    pub kick_policy: KickPolicy,
    /// Largest message body.
    pub max_body_bytes: u32,
    /// Silence after which a session is dropped.
    pub heartbeat_timeout: Duration,
    /// Sustained frames per second per session.
    pub rate_per_sec: u32,
    /// Burst size.
    pub rate_burst: u32,
    /// Session limit.
    pub max_sessions: usize,
    /// Concurrent login limit.
    pub max_concurrent_logins: usize,
    /// Connections between handshake and login.
    pub max_unauthenticated: usize,
    /// Replace a 0-byte database file with a new store.
    pub create_store: bool,
    /// Sessions per user.
    pub max_sessions_per_user: usize,
    /// Minimum client version.
    pub min_client_version: Option<String>,
    /// Refuse unknown recipients.
    pub require_known_recipient: bool,
    /// Repeat send results on a lossy path.
    pub loss_copies: bool,
    /// QUIC congestion controller.
    pub congestion: CongestionControl,
    /// Store durability.
    pub durability: Durability,
    /// The PostgreSQL store (`None`: SQLite in `data`).
    pub store: Option<crate::store::postgres::PgSettings>,
    /// Banned users.
    pub banned_users: Vec<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Push retransmission schedule.
    pub push_qos: PushQos,
    /// Largest group.
    pub max_group_members: usize,
    /// Largest large group.
    pub max_large_group_members: usize,
    /// Groups up to this size send READ receipts to senders.
    pub group_receipts_max_members: usize,
    /// Recall window.
    pub recall_window: Duration,
    /// Offline push webhook.
    pub push_webhook_url: Option<String>,
    /// Offline push delay.
    pub push_webhook_delay: Duration,
    /// Service accounts (c2s).
    pub service_accounts: Vec<String>,
    /// c2s webhook.
    pub service_webhook_url: Option<String>,
    /// Webhook signing key.
    pub webhook_secret: Vec<u8>,
    /// Cluster settings (`None`: a single node).
    pub cluster: Option<crate::cluster::ClusterSettings>,
    /// The QUIC reset secret (`None`: the file in the data directory).
    pub quic_reset_key: Option<Vec<u8>>,
}

impl Config {
    /// The effective configuration as `key = value` lines, in the TOML file's key
    /// names, secrets masked (`tern-server config check`).
    pub fn describe(&self) -> Vec<(&'static str, String)> {
        let addr = |a: &Option<SocketAddr>| a.map_or("off".to_owned(), |a| a.to_string());
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
        let masked = |v: &[u8]| format!("(set, {} bytes)", v.len());
        let list = |v: &[String]| format!("[{}]", v.join(", "));
        let secs = |d: Duration| d.as_secs().to_string();
        vec![
            ("quic", self.quic.to_string()),
            ("tcp", addr(&self.tcp)),
            ("ws", addr(&self.ws)),
            ("http", self.http.to_string()),
            ("data", self.data.display().to_string()),
            ("dev", self.dev.to_string()),
            (
                "tls_cert / tls_key",
                self.tls
                    .as_ref()
                    .map_or("(dev certificate)".into(), |(c, k)| {
                        format!("{} / {}", c.display(), k.display())
                    }),
            ),
            ("token_secret", masked(&self.token_secret)),
            ("api_key", masked(self.api_key.as_bytes())),
            ("webhook_secret", masked(&self.webhook_secret)),
            ("kick_policy", format!("{:?}", self.kick_policy)),
            ("max_body_bytes", self.max_body_bytes.to_string()),
            ("heartbeat_timeout_secs", secs(self.heartbeat_timeout)),
            ("rate_per_sec", self.rate_per_sec.to_string()),
            ("rate_burst", self.rate_burst.to_string()),
            ("max_sessions", self.max_sessions.to_string()),
            (
                "max_sessions_per_user",
                self.max_sessions_per_user.to_string(),
            ),
            (
                "max_concurrent_logins",
                self.max_concurrent_logins.to_string(),
            ),
            ("max_unauthenticated", self.max_unauthenticated.to_string()),
            ("create_store", self.create_store.to_string()),
            ("min_client_version", opt(&self.min_client_version)),
            (
                "require_known_recipient",
                self.require_known_recipient.to_string(),
            ),
            ("loss_copies", self.loss_copies.to_string()),
            (
                "congestion",
                self.congestion.to_protocol().as_str().to_owned(),
            ),
            (
                "durability",
                format!("{:?}", self.durability).to_lowercase(),
            ),
            (
                "store",
                self.store.as_ref().map_or("sqlite (in data)".into(), |p| {
                    format!(
                        "{} (writers {}, pool {})",
                        crate::store::postgres::masked_url(&p.url),
                        p.writers,
                        p.pool_size
                    )
                }),
            ),
            ("banned_users", list(&self.banned_users)),
            (
                "log_format",
                format!("{:?}", self.log_format).to_lowercase(),
            ),
            ("push_qos", format!("{:?}", self.push_qos).to_lowercase()),
            ("max_group_members", self.max_group_members.to_string()),
            (
                "max_large_group_members",
                self.max_large_group_members.to_string(),
            ),
            (
                "group_receipts_max_members",
                self.group_receipts_max_members.to_string(),
            ),
            ("recall_window_secs", secs(self.recall_window)),
            ("push_webhook_url", opt(&self.push_webhook_url)),
            (
                "push_webhook_delay_ms",
                self.push_webhook_delay.as_millis().to_string(),
            ),
            ("service_accounts", list(&self.service_accounts)),
            ("service_webhook_url", opt(&self.service_webhook_url)),
            (
                "nats / node / node_number",
                self.cluster.as_ref().map_or("(single node)".into(), |c| {
                    format!("{} / {} / {}", c.nats_url, c.node, c.node_number)
                }),
            ),
            (
                "quic_reset_key",
                self.quic_reset_key
                    .as_deref()
                    .map_or("(quic-reset.key in data)".into(), masked),
            ),
        ]
    }

    /// Applies defaults and checks the combination.
    pub fn resolve(s: Settings) -> anyhow::Result<Config> {
        let dev = s.dev.unwrap_or(false);
        let tls = match (s.tls_cert, s.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) if dev => None,
            (None, None) => anyhow::bail!("tls_cert and tls_key are required (or run with --dev)"),
            _ => anyhow::bail!("tls_cert and tls_key must be set together"),
        };
        let token_secret = match s.token_secret {
            Some(t) if t.len() >= 16 => t.into_bytes(),
            Some(_) => anyhow::bail!("token_secret must be at least 16 bytes"),
            None if dev => DEV_TOKEN_SECRET.as_bytes().to_vec(),
            None => anyhow::bail!("token_secret is required (or run with --dev)"),
        };
        let api_key = match s.api_key {
            Some(k) if !k.is_empty() => k,
            _ if dev => DEV_API_KEY.to_owned(),
            _ => anyhow::bail!("api_key is required (or run with --dev)"),
        };
        let heartbeat_timeout = Duration::from_secs(s.heartbeat_timeout_secs.unwrap_or(700));
        anyhow::ensure!(
            heartbeat_timeout >= Duration::from_secs(1),
            "heartbeat_timeout_secs must be at least 1"
        );
        let max_body_bytes = s.max_body_bytes.unwrap_or(64 * 1024);
        // A message this large must fit in one sync page (see tern_protocol::page).
        anyhow::ensure!(
            max_body_bytes <= tern_protocol::page::MAX_BODY_BYTES_LIMIT,
            "max_body_bytes must be at most {}",
            tern_protocol::page::MAX_BODY_BYTES_LIMIT
        );
        let webhooks = s.push_webhook_url.is_some() || s.service_webhook_url.is_some();
        let webhook_secret = match s.webhook_secret {
            Some(k) if k.len() >= 16 => k.into_bytes(),
            Some(_) => anyhow::bail!("webhook_secret must be at least 16 bytes"),
            None if dev || !webhooks => DEV_WEBHOOK_SECRET.as_bytes().to_vec(),
            None => anyhow::bail!("webhook_secret is required when a webhook URL is set"),
        };
        let service_accounts = s.service_accounts.unwrap_or_default();
        anyhow::ensure!(
            service_accounts.is_empty() || s.service_webhook_url.is_some(),
            "service_accounts need service_webhook_url"
        );
        anyhow::ensure!(
            service_accounts
                .iter()
                .all(|a| tern_protocol::is_valid_user_id(a)),
            "service_accounts must be valid user ids"
        );
        let quic = s
            .quic
            .unwrap_or_else(|| "0.0.0.0:7443".parse().expect("valid"));
        let tcp = match s.tcp.as_deref() {
            Some("off") => None,
            Some(a) => Some(
                a.parse()
                    .map_err(|e| anyhow::anyhow!("tcp must be an address or \"off\": {e}"))?,
            ),
            None if dev => Some(quic),
            None => None,
        };
        let ws = match s.ws.as_deref() {
            Some("off") => None,
            Some(a) => Some(
                a.parse()
                    .map_err(|e| anyhow::anyhow!("ws must be an address or \"off\": {e}"))?,
            ),
            None if dev => {
                let mut a = quic;
                if a.port() != 0 {
                    a.set_port(a.port().wrapping_add(1));
                }
                Some(a)
            }
            None => None,
        };
        let quic_reset_key = match s.quic_reset_key {
            Some(k) if k.len() >= 32 => Some(k.into_bytes()),
            Some(_) => anyhow::bail!("quic_reset_key must be at least 32 bytes"),
            None => None,
        };
        let cluster = match s.nats {
            Some(url) if !url.is_empty() => {
                anyhow::ensure!(
                    s.store_url.as_deref().is_some_and(|u| !u.is_empty()),
                    "a cluster (nats) needs the PostgreSQL store (store_url): every node must see the same store"
                );
                let node = s.node.unwrap_or_else(|| {
                    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "node".into());
                    format!("{host}-{}", quic.port())
                });
                anyhow::ensure!(
                    !node.is_empty() && node.len() <= 64,
                    "node must be 1-64 characters"
                );
                Some(crate::cluster::ClusterSettings {
                    nats_url: url,
                    node,
                    node_number: s.node_number.unwrap_or(0),
                })
            }
            _ => None,
        };
        Ok(Config {
            quic,
            tcp,
            ws,
            http: s
                .http
                .unwrap_or_else(|| "127.0.0.1:7480".parse().expect("valid")),
            data: s.data.unwrap_or_else(|| PathBuf::from("tern-data")),
            dev,
            tls,
            token_secret,
            api_key,
            kick_policy: s.kick_policy.unwrap_or_default(),
            max_body_bytes,
            heartbeat_timeout,
            rate_per_sec: s.rate_per_sec.unwrap_or(50).max(1),
            rate_burst: s.rate_burst.unwrap_or(200).max(1),
            max_sessions: s.max_sessions.unwrap_or(100_000),
            max_concurrent_logins: s.max_concurrent_logins.unwrap_or(512).max(1),
            max_unauthenticated: s.max_unauthenticated.unwrap_or(1024).max(1),
            create_store: s.create_store.unwrap_or(false),
            max_sessions_per_user: s.max_sessions_per_user.unwrap_or(16).max(1),
            min_client_version: s.min_client_version,
            require_known_recipient: s.require_known_recipient.unwrap_or(false),
            loss_copies: s.loss_copies.unwrap_or(true),
            congestion: s.congestion.unwrap_or_default(),
            durability: s.durability.unwrap_or_default(),
            store: match s.store_url {
                Some(url) if !url.is_empty() => {
                    anyhow::ensure!(
                        url.starts_with("postgres://") || url.starts_with("postgresql://"),
                        "store_url must be a postgres:// URL (unset it for the SQLite store)"
                    );
                    let mut p = crate::store::postgres::PgSettings::new(url);
                    p.writers = s.store_writers.unwrap_or(p.writers).max(1);
                    p.pool_size = s.store_pool_size.unwrap_or(p.pool_size).max(1);
                    p.ca_file = s.store_ca_file;
                    Some(p)
                }
                _ => None,
            },
            banned_users: s.banned_users.unwrap_or_default(),
            log_format: s.log_format.unwrap_or_default(),
            push_qos: s.push_qos.unwrap_or_default(),
            max_group_members: s.max_group_members.unwrap_or(2000).max(2),
            max_large_group_members: s.max_large_group_members.unwrap_or(100_000).max(2),
            group_receipts_max_members: s.group_receipts_max_members.unwrap_or(100),
            recall_window: Duration::from_secs(s.recall_window_secs.unwrap_or(120)),
            push_webhook_url: s.push_webhook_url,
            push_webhook_delay: Duration::from_millis(s.push_webhook_delay_ms.unwrap_or(3000)),
            service_accounts,
            service_webhook_url: s.service_webhook_url,
            webhook_secret,
            cluster,
            quic_reset_key,
        })
    }

    /// A dev-mode configuration on loopback with ephemeral ports, for tests.
    pub fn dev_loopback(data: &Path) -> Config {
        Config::resolve(Settings {
            quic: Some("127.0.0.1:0".parse().expect("valid")),
            http: Some("127.0.0.1:0".parse().expect("valid")),
            data: Some(data.to_owned()),
            dev: Some(true),
            ..Settings::default()
        })
        .expect("dev settings are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_protocol::qos::QosConfig;

    #[test]
    fn the_example_file_is_valid_and_describe_masks_secrets() {
        let file: Settings =
            toml::from_str(include_str!("../tern.example.toml")).expect("example parses");
        let c = Config::resolve(file).expect("example is a valid configuration");
        let lines = c.describe();
        let secret = lines.iter().find(|(k, _)| *k == "token_secret").unwrap();
        assert!(secret.1.starts_with("(set, "), "{secret:?}");
        assert!(
            lines.iter().all(|(_, v)| !v.contains("change-me")),
            "no secret value is printed"
        );
    }

    #[test]
    fn a_postgres_store_is_configured_and_its_password_never_printed() {
        let file: Settings = toml::from_str(
            "dev = true\nstore_url = \"postgres://tern:s3cret-pw@db:5432/tern\"\nstore_writers = 4",
        )
        .unwrap();
        let c = Config::resolve(file).unwrap();
        let pg = c.store.as_ref().expect("postgres store");
        assert_eq!((pg.writers, pg.pool_size), (4, 16));
        let store = c
            .describe()
            .into_iter()
            .find(|(k, _)| *k == "store")
            .unwrap();
        assert_eq!(
            store.1,
            "postgres://tern:***@db:5432/tern (writers 4, pool 16)"
        );
        let bad: Settings = toml::from_str("dev = true\nstore_url = \"mysql://x\"").unwrap();
        assert!(Config::resolve(bad).is_err(), "only postgres:// URLs");
        let unset: Settings = toml::from_str("dev = true").unwrap();
        assert!(
            Config::resolve(unset).unwrap().store.is_none(),
            "SQLite by default"
        );
    }

    #[test]
    fn a_cluster_needs_the_postgres_store_and_a_long_reset_key() {
        let pg = "dev = true\nstore_url = \"postgres://tern@db/tern\"\n";
        let c: Settings = toml::from_str(&format!(
            "{pg}nats = \"nats://n1:4222,nats://n2:4222\"\nnode = \"a\"\nnode_number = 7\nquic_reset_key = \"0123456789abcdef0123456789abcdef\""
        ))
        .unwrap();
        let c = Config::resolve(c).unwrap();
        let cluster = c.cluster.as_ref().expect("a cluster node");
        assert_eq!((cluster.node.as_str(), cluster.node_number), ("a", 7));
        assert_eq!(c.quic_reset_key.as_deref().map(<[u8]>::len), Some(32));
        let shown = c.describe();
        let key = shown.iter().find(|(k, _)| *k == "quic_reset_key").unwrap();
        assert!(key.1.starts_with("(set, "), "{key:?}");
        let no_pg: Settings = toml::from_str("dev = true\nnats = \"nats://n1:4222\"").unwrap();
        let err = Config::resolve(no_pg).unwrap_err().to_string();
        assert!(err.contains("PostgreSQL"), "{err}");
        let short: Settings =
            toml::from_str(&format!("{pg}quic_reset_key = \"too short\"")).unwrap();
        assert!(Config::resolve(short).is_err());
        let single: Settings = toml::from_str(pg).unwrap();
        assert!(Config::resolve(single).unwrap().cluster.is_none());
    }

    #[test]
    fn flags_override_file_and_production_needs_secrets() {
        let file: Settings =
            toml::from_str("quic = \"0.0.0.0:9000\"\nrate_per_sec = 5\ndev = true").unwrap();
        let flags = Settings {
            rate_per_sec: Some(7),
            ..Settings::default()
        };
        let c = Config::resolve(flags.over(file)).unwrap();
        assert_eq!(c.quic.port(), 9000);
        assert_eq!(c.rate_per_sec, 7);
        assert_eq!(c.token_secret, DEV_TOKEN_SECRET.as_bytes());
        let err = Config::resolve(Settings::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls_cert"), "{err}");
        assert_eq!(c.push_qos, PushQos::Adaptive);
        let file: Settings = toml::from_str("dev = true\npush_qos = \"mobileimsdk\"").unwrap();
        let c = Config::resolve(file).unwrap();
        assert_eq!(c.push_qos.config().window, QosConfig::mobileimsdk().window);
        assert!(
            toml::from_str::<Settings>("no_such_key = 1").is_err(),
            "unknown keys are refused"
        );
    }
}
