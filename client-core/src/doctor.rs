//! `Client::doctor`: the checks a user or a support engineer runs when "it doesn't
//! connect", one line each with the fix. It tries each transport by itself (so a
//! fallback that hides a blocked UDP path does not hide it from the doctor), reads the
//! token the way the server will, compares clocks with the server's, and finally runs
//! an ordinary session for a moment to report what it settled on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use tern_protocol::{ErrorCode, pb};

use crate::connection::{self, ConnectError, Connected};
use crate::{Client, ConnectionState, Inner, transport};

/// How long each network step may take.
const STEP: Duration = Duration::from_secs(5);

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// Fine.
    Ok,
    /// Works, but worth knowing (a fallback in use, a clock a little off).
    Warning,
    /// Broken: see the fix.
    Failed,
}

/// One line of the doctor's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorCheck {
    /// What was checked (`address`, `QUIC (UDP)`, `token`, ...).
    pub name: String,
    /// The outcome.
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// What to do about it (for warnings and failures).
    pub fix: Option<String>,
}

fn check(name: &str, status: CheckStatus, detail: String, fix: Option<&str>) -> DoctorCheck {
    DoctorCheck {
        name: name.to_owned(),
        status,
        detail,
        fix: fix.map(str::to_owned),
    }
}

/// The fix for a login the server refused.
fn login_fix(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadToken => {
            "the server does not accept this token: mint it with the server's token secret, for this user (and device, if bound)"
        }
        ErrorCode::TokenExpired => "get a new token from your backend",
        ErrorCode::Banned => "this user is banned on the server (banned_users)",
        ErrorCode::UpgradeRequired => "update the app: the server requires a newer client_version",
        ErrorCode::ServerBusy => {
            "the server is at its session or login limit: try again in a minute"
        }
        _ => "see the server's log for this login",
    }
}

/// A TLS failure, as the connect error says it.
fn certificate_problem(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    e.contains("certificate") || e.contains("unknownissuer") || e.contains("notvalidforname")
}

/// The token's claims as the server will read them (the signature only the server can
/// check).
fn token_check(user: &str, token: &str) -> DoctorCheck {
    let claims = token
        .split_once('.')
        .and_then(|(payload, _)| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok());
    let Some(claims) = claims else {
        return check(
            "token",
            CheckStatus::Failed,
            "not a Tern login token (payload.signature, base64url JSON)".into(),
            Some(
                "pass the token your backend minted (tern-server token --dev --user U in development)",
            ),
        );
    };
    let sub = claims["sub"].as_str().unwrap_or_default();
    let exp = claims["exp"].as_u64().unwrap_or(0);
    let now = tern_protocol::unix_ms() / 1000;
    if sub != user {
        return check(
            "token",
            CheckStatus::Failed,
            format!("the token is for user {sub:?}, not {user:?}"),
            Some("log in as the token's user, or mint a token for this one"),
        );
    }
    if exp <= now {
        return check(
            "token",
            CheckStatus::Failed,
            format!("expired {} ago (by this device's clock)", human(now - exp)),
            Some("get a new token from your backend (and check this device's clock, below)"),
        );
    }
    let bound = claims["dev"]
        .as_str()
        .map(|d| format!(", bound to device {d:?}"))
        .unwrap_or_default();
    check(
        "token",
        CheckStatus::Ok,
        format!("for {sub:?}, valid for {}{bound}", human(exp - now)),
        None,
    )
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// One transport's attempt: connected and logged in, connected and refused, or not
/// connected.
async fn attempt(
    name: &str,
    port_hint: &str,
    result: Result<Connected, ConnectError>,
    took: Duration,
    logins: &mut Vec<Result<pb::LoginResult, (ErrorCode, String)>>,
    tls_errors: &mut Vec<String>,
) -> DoctorCheck {
    match result {
        Ok((link, _, _, result)) => {
            link.close(0, b"doctor");
            logins.push(Ok(result));
            check(
                name,
                CheckStatus::Ok,
                format!("connected and logged in ({} ms)", took.as_millis()),
                None,
            )
        }
        Err(ConnectError::Refused(code, message)) => {
            logins.push(Err((code, message)));
            check(
                name,
                CheckStatus::Ok,
                format!(
                    "connected ({} ms); the login was refused (below)",
                    took.as_millis()
                ),
                None,
            )
        }
        Err(ConnectError::Failed(e)) if certificate_problem(&e) => {
            tls_errors.push(e.clone());
            check(
                name,
                CheckStatus::Failed,
                format!("TLS failed: {e}"),
                Some("see the certificate line"),
            )
        }
        Err(ConnectError::Failed(e)) => check(
            name,
            CheckStatus::Failed,
            format!("no connection within {} s: {e}", STEP.as_secs()),
            Some(port_hint),
        ),
    }
}

async fn run(inner: Arc<Inner>, user: String, token: String) -> Vec<DoctorCheck> {
    let cfg = &inner.config;
    let mut out = vec![];
    match tokio::time::timeout(STEP, inner.servers.resolve()).await {
        Ok(Ok(addrs)) => {
            let list: Vec<String> = addrs.iter().map(|c| c.addr.to_string()).collect();
            out.push(check(
                "address",
                CheckStatus::Ok,
                format!("{} is {}", cfg.server, list.join(", ")),
                None,
            ))
        }
        Ok(Err(e)) => out.push(check(
            "address",
            CheckStatus::Failed,
            format!("cannot resolve {}: {e}", cfg.server),
            Some("check the server address (host:port) and this network's DNS"),
        )),
        Err(_) => out.push(check(
            "address",
            CheckStatus::Failed,
            format!("resolving {} took over {} s", cfg.server, STEP.as_secs()),
            Some("this network's DNS is not answering"),
        )),
    }
    out.push(token_check(&user, &token));
    let mut logins = vec![];
    let mut tls_errors = vec![];
    let udp_hint = format!(
        "UDP to {} is blocked or the server is down; the client falls back to TLS over TCP where the server offers it (next line); allow UDP to that port for the best connection",
        cfg.server
    );
    let quic = match connection::endpoint(&inner) {
        Ok(endpoint) => {
            let started = Instant::now();
            let r = connection::connect(&inner, &endpoint, &user, &token, STEP).await;
            let c = attempt(
                "QUIC (UDP)",
                &udp_hint,
                r,
                started.elapsed(),
                &mut logins,
                &mut tls_errors,
            )
            .await;
            endpoint.close(0u32.into(), b"");
            c
        }
        Err(e) => check(
            "QUIC (UDP)",
            CheckStatus::Failed,
            e,
            Some("this device cannot open a UDP socket"),
        ),
    };
    out.push(quic);
    let tcp_server = cfg
        .tcp_server
        .clone()
        .unwrap_or_else(|| crate::servers::first(&cfg.server));
    let tcp_hint = format!(
        "nothing accepts TLS over TCP at {tcp_server}: the server may run without --tcp, or a firewall drops it"
    );
    let started = Instant::now();
    let r = transport::connect_tcp(&inner, &user, &token, STEP).await;
    let mut tcp = attempt(
        "TLS over TCP",
        &tcp_hint,
        r,
        started.elapsed(),
        &mut logins,
        &mut tls_errors,
    )
    .await;
    if tcp.status == CheckStatus::Failed
        && out.last().is_some_and(|q| q.status == CheckStatus::Ok)
        && tls_errors.is_empty()
    {
        tcp.status = CheckStatus::Warning; // QUIC works: the fallback is only a fallback
    }
    out.push(tcp);
    let connected = !logins.is_empty();
    out.push(if connected {
        check("certificate", CheckStatus::Ok, format!("trusted ({})", connection::tls_name(cfg)), None)
    } else if let Some(e) = tls_errors.first() {
        check(
            "certificate",
            CheckStatus::Failed,
            format!("not trusted: {e}"),
            Some(if cfg.ca_pem.is_some() {
                "the certificate given (--ca) did not sign the server's: use the server's certificate or its CA"
            } else {
                "the server's certificate is not from a public CA: pass it (--ca PEM; the dev server's is tern-data/dev-cert.pem)"
            }),
        )
    } else {
        check("certificate", CheckStatus::Warning, "not checked: no transport reached the server".into(), None)
    });
    match logins.first() {
        Some(Ok(result)) => {
            out.push(check(
                "login",
                CheckStatus::Ok,
                format!(
                    "accepted as {user:?} (inbox at seq {})",
                    result.inbox_head_seq
                ),
                None,
            ));
            let offset = result.server_time_ms as i64 - tern_protocol::unix_ms() as i64;
            let (status, fix) = match offset.unsigned_abs() {
                d if d < 5_000 => (CheckStatus::Ok, None),
                d if d < 120_000 => (
                    CheckStatus::Warning,
                    Some("set this device's clock from the network (NTP)"),
                ),
                _ => (
                    CheckStatus::Failed,
                    Some(
                        "this device's clock is wrong: turn on automatic time (NTP); tokens and message times depend on it",
                    ),
                ),
            };
            let way = if offset > 0 { "behind" } else { "ahead of" };
            out.push(check(
                "clock",
                status,
                format!(
                    "{:.1} s {way} the server",
                    offset.unsigned_abs() as f64 / 1000.0
                ),
                fix,
            ));
        }
        Some(Err((code, message))) => {
            out.push(check(
                "login",
                CheckStatus::Failed,
                format!("refused: {} ({message})", code.as_str_name()),
                Some(login_fix(*code)),
            ));
        }
        None => out.push(check(
            "login",
            CheckStatus::Failed,
            "not tried: no transport reached the server".into(),
            Some("fix the lines above first"),
        )),
    }
    out
}

impl Client {
    /// Runs the doctor's checks for `user` with `token` (see the module docs) and, if a
    /// login works, an ordinary session for a moment to report the transport and
    /// heartbeat it settles on. Takes up to about 25 s; leaves the client logged out.
    /// Call it on a client that is not logged in.
    pub fn doctor(&self, user: &str, token: &str) -> Vec<DoctorCheck> {
        // The logins below read the device's sync position.
        match crate::store::Db::open(&self.inner.config.data_dir, user) {
            Ok(db) => *self.inner.db.lock().unwrap_or_else(|p| p.into_inner()) = Some(db),
            Err(e) => {
                return vec![check(
                    "client",
                    CheckStatus::Failed,
                    format!("cannot open the local database: {e}"),
                    None,
                )];
            }
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = self.inner.clone();
        let (u, t) = (user.to_owned(), token.to_owned());
        {
            let rt = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
            let Some(rt) = rt.as_ref() else {
                return vec![check(
                    "client",
                    CheckStatus::Failed,
                    "the client was shut down".into(),
                    None,
                )];
            };
            rt.spawn(async move {
                let _ = tx.send(run(inner, u, t).await);
            });
        }
        let mut out = rx.recv().unwrap_or_default();
        *self.inner.db.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if !out
            .iter()
            .any(|c| c.name == "login" && c.status == CheckStatus::Ok)
        {
            return out;
        }
        if let Err(e) = self.login(user, token) {
            out.push(check("session", CheckStatus::Failed, e.to_string(), None));
            return out;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.connection_state() != ConnectionState::Connected {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        let d = self.diagnostics();
        if self.connection_state() == ConnectionState::Connected {
            let transport = d.transport.unwrap_or_else(|| "?".into());
            let status = if transport == "quic" {
                CheckStatus::Ok
            } else {
                CheckStatus::Warning
            };
            out.push(check(
                "session",
                status,
                format!(
                    "connected over {transport}; heartbeat every {} s ({}){}",
                    d.heartbeat_interval_ms / 1000,
                    if d.heartbeat_locked {
                        "learned for this network"
                    } else {
                        "still learning this network's NAT timeout"
                    },
                    d.srtt_ms
                        .map(|r| format!(", round trip {r} ms"))
                        .unwrap_or_default()
                ),
                (status == CheckStatus::Warning).then_some(
                    "UDP is blocked here: TLS over TCP works, but costs more on a lossy network",
                ),
            ));
        } else {
            out.push(check(
                "session",
                CheckStatus::Failed,
                format!("not connected after 10 s: {:?}", self.connection_state()),
                d.last_error
                    .as_deref()
                    .map(|_| "see the last error in the client's log"),
            ));
        }
        self.logout();
        out
    }
}
