//! The connection manager: one task per logged-in client.
//!
//! ```text
//!   ┌──────────── connect + Login ◄──────────────────────────────┐
//!   │ ok                          refused for good → LoginFailed   │ backoff (full jitter),
//!   ▼                                                              │ at once after network_changed
//!  session: summaries → sync pages → resend outbox → live ──lost──┘
//!           kickout → KickedOut (stop) · logout → Disconnected (stop)
//! ```
//!
//! The task is a thin driver, like `quinn` over `quinn-proto`: it moves frames between
//! the QUIC connection and the sans-IO machines and fires their timers, and makes no
//! protocol decision itself. The machines: [`SyncMachine`] (sends and their
//! retransmission, sync, gaps, read marks, large-group logs; see `sync.rs`), the
//! [`SmartHeartbeat`], and the [`Backoff`] between sessions. Local writes happen before
//! anything is acknowledged to the server (store, then `DeliveryAck`).
//!
//! This file holds the task's loop (connect, back off, reconnect); `dial.rs` reaches the
//! server (roots, endpoint, handshake, login, racing handshakes) and `session.rs` is one
//! connection's session.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_protocol::backoff::Backoff;
use tern_protocol::frame::{DEFAULT_MAX_FRAME_BODY, Frame};
use tern_protocol::heartbeat::{HeartbeatAction, SmartHeartbeat};
use tern_protocol::io::Inbound;
use tern_protocol::link::{Link, Reader, Transport};
use tern_protocol::{ErrorCode, pb};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

use crate::Inner;
use crate::store::{Applied, Db, DbError};
use crate::sync::{LoginInfo, MAX_PUSHES_TOGETHER, SyncConfig, SyncEvent, SyncMachine};
use crate::types::{ClientEvent, ConnectionState};

mod dial;
mod session;

pub(crate) use dial::{
    ConnectError, Connected, connect, connect_racing, endpoint, login_link, tls_name, trust_roots,
};
use dial::{handshake, login_on};
use session::{Machines, Session};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the API asks the connection task to do.
#[derive(Debug)]
pub(crate) enum Command {
    /// New messages are in the outbox.
    Flush,
    /// The app reported a different network.
    NetworkChanged(String),
    /// Foreground (true) or background.
    SetForeground(bool),
    /// End the session on purpose.
    Logout,
    /// Stop everything.
    Shutdown,
    /// A request that needs the server's answer (group operations, history, recall,
    /// push token). Answered at once with an error when not connected.
    Call(Call),
    /// Read marks were queued in the store.
    SendReads,
}

/// A request and where its answer goes.
#[derive(Debug)]
pub(crate) struct Call {
    /// The request; its request id is assigned by the session.
    pub frame: Frame,
    /// The answer frame (`OpResult`, `GroupResponse`, `HistoryResponse`), or why none.
    pub reply: std::sync::mpsc::SyncSender<Result<Frame, String>>,
}

/// Sets the request id of a request frame (false: not a request).
fn set_request_id(frame: &mut Frame, id: u64) -> bool {
    match frame {
        Frame::GroupRequest(r) => r.request_id = id,
        Frame::HistoryRequest(r) => r.request_id = id,
        Frame::RecallRequest(r) => r.request_id = id,
        Frame::PushTokenRequest(r) => r.request_id = id,
        Frame::MarkRead(r) => r.request_id = id,
        _ => return false,
    }
    true
}

/// While the path is suspect (see `SyncMachine::path_suspect`), a fresh connection is
/// tried this often...
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// ...with at most this many handshakes under way at once, each given up after
/// `PROBE_HANDSHAKE` (a fresh probe's first packet goes at once; an old one's
/// retransmissions are backed off).
const MAX_PROBES: usize = 3;
const PROBE_HANDSHAKE: Duration = Duration::from_millis(1500);
/// The smart heartbeat's network label while on TCP is the network's label plus this
/// (its NAT timeouts differ from UDP's).
const TCP_LABEL: &str = "/tcp";

/// Why a session ended.
enum End {
    Lost(String),
    /// The server sent something this client cannot read (too large, undecodable):
    /// reported and backed off, never a reconnect loop.
    BadServer(String),
    /// A probe's handshake completed while this connection looked dead: log in there.
    Moved(quinn::Connection),
    NetworkChanged,
    Kicked(pb::KickReason, String),
    LoggedOut,
    Shutdown,
}

/// After a lost connection with sends waiting, reconnect attempts race like probes (a
/// fresh handshake every [`PROBE_INTERVAL`], no backoff) for this long; then the
/// backoff schedule takes over (an app that stays offline does not keep the radio up).
const RACE_FOR: Duration = Duration::from_secs(60);

/// Codes after which retrying the same login cannot succeed.
fn fatal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadToken
            | ErrorCode::TokenExpired
            | ErrorCode::Banned
            | ErrorCode::UpgradeRequired
            | ErrorCode::InvalidArgument
            | ErrorCode::UnsupportedVersion
    )
}

/// The connection task of one logged-in client.
pub(crate) async fn run(
    inner: Arc<Inner>,
    user: String,
    token: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let cfg = inner.config.clone();
    let now = Instant::now().into_std();
    let datagram_sends = cfg.uplink == crate::Uplink::Datagram;
    let mut qos = cfg.qos.clone();
    qos.retransmit = datagram_sends;
    let mut state = Machines {
        sync: SyncMachine::new(
            SyncConfig {
                qos,
                datagram_sends,
                gap_wait: cfg.gap_wait,
                sync_page: cfg.sync_page,
                full_history_sync: cfg.full_history_sync,
            },
            now,
        ),
        heartbeat: SmartHeartbeat::new(cfg.heartbeat.clone(), &cfg.network_label, now),
        backoff: Backoff::new(cfg.backoff.clone(), rand::random()),
        heartbeats_sent: 0,
    };
    let endpoint = match endpoint(&inner) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the QUIC endpoint");
            inner.set_state(ConnectionState::LoginFailed {
                code: "TLS_CONFIG".into(),
                message: e,
            });
            return;
        }
    };
    let mut moved: Option<quinn::Connection> = None;
    // When the last session was lost (not ended on purpose).
    let mut lost_at: Option<Instant> = None;
    loop {
        // Sends are waiting and the loss is recent: race handshakes, no backoff.
        let urgent =
            lost_at.is_some_and(|t| t.elapsed() < RACE_FOR) && sends_waiting(&inner, &state);
        let attempt = match moved.take() {
            Some(conn) => login_on(&inner, conn, &user, &token).await,
            None => {
                inner.set_state(ConnectionState::Connecting);
                let label = state.heartbeat.network().to_owned();
                crate::transport::connect_any(
                    &inner,
                    &endpoint,
                    &user,
                    &token,
                    urgent,
                    CONNECT_TIMEOUT,
                    &label,
                )
                .await
            }
        };
        let mut immediate = false;
        // The server answered and said no (busy, say): always back off.
        let mut refused = false;
        let end = match attempt {
            Ok((link, reader, buf, result)) => {
                inner.max_body.store(
                    result.max_body_bytes.max(1),
                    std::sync::atomic::Ordering::Relaxed,
                );
                state.backoff.on_connected(Instant::now().into_std());
                lost_at = None;
                inner.set_state(ConnectionState::Connected);
                tracing::info!(%user, session = %result.session_id, head = result.inbox_head_seq, "logged in");
                let login = LoginInfo {
                    head: result.inbox_head_seq,
                    next_send_seq: result.next_send_seq,
                    send_rate_per_sec: result.send_rate_per_sec,
                    send_burst: result.send_burst,
                    store_generation: result.store_generation,
                    restored_seq: result.restored_seq,
                };
                let mut session = Session::new(&inner, &endpoint, link, login);
                let end = session.run(reader, buf, &mut state, &mut commands).await;
                state.sync.on_disconnected();
                session.link.close(0, b"bye");
                state.backoff.on_disconnected(Instant::now().into_std());
                end
            }
            Err(ConnectError::Refused(code, message)) if fatal(code) => {
                tracing::warn!(%user, code = code.as_str_name(), %message, "login refused");
                inner.set_state(ConnectionState::LoginFailed {
                    code: code.as_str_name().into(),
                    message,
                });
                return;
            }
            Err(ConnectError::Refused(code, message)) => {
                refused = true;
                End::Lost(format!("{}: {message}", code.as_str_name()))
            }
            Err(ConnectError::Failed(e)) => End::Lost(e),
        };
        match end {
            End::Moved(c) => {
                tracing::info!(%user, "the path looked dead: moved to a fresh connection");
                moved = Some(c);
                continue;
            }
            End::Lost(why) => {
                tracing::info!(%user, %why, "connection lost");
                inner.servers.lost();
                let lost = *lost_at.get_or_insert_with(Instant::now);
                if !refused && lost.elapsed() < RACE_FOR && sends_waiting(&inner, &state) {
                    continue; // race the reconnect (the racing attempts are the wait)
                }
            }
            End::BadServer(why) => {
                tracing::error!(%user, %why, "the server sent a frame this client cannot read: backing off");
                inner.set_last_error(why);
            }
            End::NetworkChanged => immediate = true,
            End::Kicked(pb::KickReason::ServerShutdown, text) => {
                // Another node (if there is one) is tried at once.
                immediate = inner.servers.going_away();
                tracing::info!(%user, %text, elsewhere = immediate, "server going away")
            }
            End::Kicked(reason, text) => {
                tracing::warn!(%user, reason = reason.as_str_name(), %text, "kicked out");
                inner.set_state(ConnectionState::KickedOut {
                    reason: reason.as_str_name().into(),
                    text,
                });
                return;
            }
            End::LoggedOut => {
                inner.set_state(ConnectionState::Disconnected);
                return;
            }
            End::Shutdown => return,
        }
        let delay = if immediate {
            state.backoff.network_changed()
        } else {
            state.backoff.next_delay()
        };
        inner.set_state(ConnectionState::WaitingToReconnect {
            delay_ms: delay.as_millis() as u64,
        });
        let wake = sleep_until(Instant::now() + delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                cmd = commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => return,
                    Some(Command::Logout) => {
                        inner.set_state(ConnectionState::Disconnected);
                        return;
                    }
                    Some(Command::NetworkChanged(label)) => {
                        state.heartbeat.network_changed(&label);
                        state.backoff.network_changed();
                        break;
                    }
                    Some(Command::SetForeground(f)) => state.heartbeat.set_foreground(f),
                    Some(Command::Call(call)) => {
                        let _ = call.reply.try_send(Err("not connected".into()));
                    }
                    // A message written soon after the loss: try now.
                    Some(Command::Flush)
                        if lost_at.is_some_and(|t| t.elapsed() < RACE_FOR) => break,
                    Some(Command::Flush) | Some(Command::SendReads) => {}
                },
            }
        }
    }
}

/// Whether sends are waiting for the server (in flight, or queued in the outbox).
fn sends_waiting(inner: &Inner, state: &Machines) -> bool {
    state.sync.qos().in_flight() > 0
        || inner
            .with_db(|db| db.outbox_sends(1))
            .is_ok_and(|v| !v.is_empty())
}
