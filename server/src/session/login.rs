//! From handshake to a registered session: the `Login` frame, token check, kick policy,
//! `LoginResult`. Refusals answer with a code and close the connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use futures_util::stream::FuturesUnordered;
use tern_protocol::frame::Frame;
use tern_protocol::input::Input;
use tern_protocol::io::{ReadError, read_frame};
use tern_protocol::link::{Link, Reader, Transport};
use tern_protocol::qos::Sender;
use tern_protocol::{ErrorCode, is_valid_user_id, pb};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::{LOGIN_TIMEOUT, MAX_LOGIN_FRAME, Session, WRITE_TIMEOUT, code_name};
use crate::auth::LoginRequest;
use crate::registry::SessionInfo;
use crate::state::Shared;
use crate::store::store_failure;
use tern_protocol::rate::TokenBucket;

/// Dotted-number comparison: "1.10.0" > "1.9.3". Non-numeric parts count as 0.
fn version_lt(have: &str, min: &str) -> bool {
    let parse = |v: &str| {
        v.split('.')
            .map(|p| p.trim().parse::<u64>().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    let (mut a, mut b) = (parse(have), parse(min));
    let n = a.len().max(b.len());
    a.resize(n, 0);
    b.resize(n, 0);
    a < b
}

/// A device id: 1 to 128 bytes, no control characters (it is logged and stored).
fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_control)
}

/// The flood guard for ACKs and heartbeats is this many times the send budget.
const CONTROL_FACTOR: u32 = 10;

async fn write(link: &mut Link, frame: &Frame) -> Result<(), String> {
    super::tally::sent(frame);
    link.write_stream(&frame.to_bytes(0), WRITE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())
}

/// Answers with an error frame and closes the connection.
async fn reject(link: &mut Link, frame: Frame, code: ErrorCode) {
    let _ = write(link, &frame).await;
    link.finish().await;
    // Give the frame a moment to leave before the close overtakes it.
    link.closed(Duration::from_millis(300)).await;
    link.close(code as u32, code_name(code).as_bytes());
}

/// A QUIC connection's way to a session: its session stream, then the `Login` frame.
pub(super) async fn login(shared: &Arc<Shared>, conn: quinn::Connection) -> Option<Session> {
    let (send, mut recv) = match timeout(LOGIN_TIMEOUT, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        _ => {
            conn.close(
                quinn::VarInt::from_u32(ErrorCode::NotLoggedIn as u32),
                b"no session stream",
            );
            return None;
        }
    };
    let mut buf = BytesMut::with_capacity(1024);
    let first = timeout(
        LOGIN_TIMEOUT,
        read_frame(&mut recv, &mut buf, MAX_LOGIN_FRAME),
    )
    .await;
    let link = Link::Quic {
        conn: conn.clone(),
        send,
    };
    let session = authenticate(shared, link, first, Reader::Quic(recv), buf).await?;
    // Logged in: the session stream may now carry frames up to the frame limit.
    conn.set_receive_window(quinn::VarInt::from_u32(
        crate::server::SESSION_RECEIVE_WINDOW,
    ));
    Some(session)
}

/// A byte stream's way to a session (TLS over TCP, after the TLS handshake): the
/// `Login` frame is its first frame.
pub(super) async fn login_stream(
    shared: &Arc<Shared>,
    transport: Transport,
    mut read: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>,
    send: tern_protocol::link::StreamWriter,
    remote: std::net::SocketAddr,
) -> Option<Session> {
    let mut buf = BytesMut::with_capacity(1024);
    let first = timeout(
        LOGIN_TIMEOUT,
        read_frame(&mut read, &mut buf, MAX_LOGIN_FRAME),
    )
    .await;
    let link = Link::Stream {
        transport,
        send,
        remote,
    };
    authenticate(shared, link, first, Reader::Stream(read), buf).await
}

/// From the first frame of a connection to a registered session, whatever the transport.
async fn authenticate(
    shared: &Arc<Shared>,
    mut link: Link,
    first: Result<
        Result<Option<(tern_protocol::Header, Frame)>, ReadError>,
        tokio::time::error::Elapsed,
    >,
    reader: Reader,
    buf: BytesMut,
) -> Option<Session> {
    let remote = link.remote_address();
    let transport = link.transport().as_str();
    let login = match first {
        Ok(Ok(Some((_, Frame::Login(l))))) => l,
        Ok(Ok(Some((_, other)))) => {
            tracing::info!(%remote, transport, kind = ?other.kind(), "first frame was not Login");
            metrics::counter!("tern_logins_total", "result" => "UNEXPECTED_FRAME").increment(1);
            let f = Frame::error(
                ErrorCode::UnexpectedFrame,
                "the first frame must be Login",
                0,
            );
            reject(&mut link, f, ErrorCode::UnexpectedFrame).await;
            return None;
        }
        Ok(Err(ReadError::Frame(e))) => {
            tracing::info!(%remote, transport, error = %e, "bad frame before login");
            metrics::counter!("tern_frames_rejected_total", "code" => code_name(e.code()))
                .increment(1);
            reject(
                &mut link,
                Frame::error(e.code(), e.to_string(), 0),
                e.code(),
            )
            .await;
            return None;
        }
        Ok(_) | Err(_) => {
            tracing::debug!(%remote, transport, "no login frame");
            link.finish().await;
            link.close(ErrorCode::NotLoggedIn as u32, b"login timeout");
            return None;
        }
    };
    let refuse = |code: ErrorCode, message: String| {
        metrics::counter!("tern_logins_total", "result" => code_name(code)).increment(1);
        // Debug-formatted: the user id is not validated yet (no forged log lines).
        tracing::info!(%remote, user = ?login.user_id, code = code_name(code), %message, "login refused");
        Frame::LoginResult(pb::LoginResult {
            code: code as i32,
            message,
            server_time_ms: tern_protocol::unix_ms(),
            ..Default::default()
        })
    };
    // Taken before any work (token check, store write) and held until the login
    // result is written: a login storm over the limit is refused for free.
    let Ok(_permit) = shared.login_permits.try_acquire() else {
        let code = ErrorCode::ServerBusy;
        reject(
            &mut link,
            refuse(code, "too many logins in progress".into()),
            code,
        )
        .await;
        return None;
    };
    let outcome: Result<(), (ErrorCode, String)> = async {
        let cfg = &shared.config;
        if shared.shutting_down.load(Ordering::Relaxed) {
            return Err((ErrorCode::ShuttingDown, "server is shutting down".into()));
        }
        if !is_valid_user_id(&login.user_id) || !is_valid_device_id(&login.device_id) {
            return Err((
                ErrorCode::InvalidArgument,
                "invalid user_id or device_id".into(),
            ));
        }
        if let Some(min) = &cfg.min_client_version {
            if version_lt(&login.client_version, min) {
                return Err((
                    ErrorCode::UpgradeRequired,
                    format!("client version {min} or newer required"),
                ));
            }
        }
        shared
            .verifier
            .verify(LoginRequest {
                user: &login.user_id,
                device: &login.device_id,
                platform: pb::Platform::try_from(login.platform)
                    .unwrap_or(pb::Platform::Unspecified),
                token: &login.token,
            })
            .await
            .map_err(|e| (e.code(), e.to_string()))?;
        shared
            .store
            .record_login(&login.user_id, &login.device_id)
            .await
            .map_err(store_failure)?;
        Ok(())
    }
    .await;
    if let Err((code, message)) = outcome {
        reject(&mut link, refuse(code, message), code).await;
        return None;
    }
    // In a cluster: receive what other nodes publish for this user from before the
    // head is read, so an entry committed elsewhere meanwhile is pushed, not missed.
    let cluster_watch = match &shared.cluster {
        Some(c) => match c.watch(&login.user_id).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(user = %login.user_id, error = %e, "cluster subscription failed; pushes from other nodes wait for sync");
                None
            }
        },
        None => None,
    };
    let id = shared.next_session_id();
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let platform = pb::Platform::try_from(login.platform).unwrap_or(pb::Platform::Unspecified);
    let since = SystemTime::now();
    let info = SessionInfo {
        id,
        user: login.user_id.clone(),
        device: login.device_id.clone(),
        platform,
        remote,
        since,
        tx: cmd_tx,
    };
    let Some(displaced) = shared
        .registry
        .try_register(info, shared.config.max_sessions)
    else {
        let code = ErrorCode::ServerBusy;
        reject(
            &mut link,
            refuse(code, "session limit reached".into()),
            code,
        )
        .await;
        return None;
    };
    for (old, cmd) in displaced {
        tracing::info!(user = %old.user, old_device = %old.device, new_device = %login.device_id, "session displaced");
        tokio::spawn(async move {
            let _ = old.tx.send(cmd).await;
        });
    }
    metrics::gauge!("tern_sessions").set(shared.registry.len() as f64);
    if let Some(c) = &shared.cluster {
        // The kick policy on the other nodes holding sessions of this user.
        c.publish(
            &login.user_id,
            pb::cluster_message::Body::Login(pb::ClusterLogin {
                device: login.device_id.clone(),
                platform: platform as i32,
                since_ms: since
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
            }),
        );
    }
    // The head is read once the session is registered, so an entry committed meanwhile
    // is pushed to it rather than missed by both: read first, an entry stored between the
    // read and the registration was neither under the head the device is told nor
    // pushed, and the device learned of it only at its next heartbeat (a `tern listen`
    // started beside the sender waited 30 s for three messages in CI). A push of an
    // entry at or under the head is a duplicate the client drops by its seq.
    let store = &shared.store;
    let (user, device) = (&login.user_id, &login.device_id);
    let read = async {
        Ok((
            store.head_seq(user).await?,
            store.next_send_seq(user, device).await?,
            store.restore_point(user).await?,
        ))
    };
    let (head, next_send_seq, restored_seq) = match read.await {
        Ok(h) => h,
        Err(e) => {
            shared.registry.unregister(&login.user_id, id);
            let (code, message) = store_failure(e);
            reject(&mut link, refuse(code, message), code).await;
            return None;
        }
    };

    let result = Frame::LoginResult(pb::LoginResult {
        code: ErrorCode::Ok as i32,
        message: String::new(),
        server_time_ms: tern_protocol::unix_ms(),
        session_id: format!("{id:x}"),
        heartbeat_timeout_ms: shared.config.heartbeat_timeout.as_millis() as u32,
        inbox_head_seq: head,
        max_body_bytes: shared.config.max_body_bytes,
        send_rate_per_sec: shared.config.rate_per_sec,
        send_burst: shared.config.rate_burst,
        next_send_seq,
        store_generation: store.generation(),
        restored_seq,
    });
    if let Err(e) = write(&mut link, &result).await {
        tracing::debug!(%remote, error = %e, "login result not delivered");
        shared.registry.unregister(&login.user_id, id);
        return None;
    }
    metrics::counter!("tern_logins_total", "result" => "OK").increment(1);
    tracing::info!(%remote, transport, user = %login.user_id, device = %login.device_id, session = id, "logged in");
    metrics::counter!("tern_logins_by_transport_total", "transport" => transport).increment(1);

    // A byte stream's reader task gets a small channel: each queued frame may be up to
    // the frame limit. QUIC is read by the session loop itself.
    let input = Input::new(
        &link,
        reader,
        buf,
        tern_protocol::frame::DEFAULT_MAX_FRAME_BODY,
        16,
    );
    // On a stream the stream retransmits: the push QoS tracks ACKs (delivered status,
    // resend after a reconnect) but does not resend within the connection.
    let mut push_qos = shared.config.push_qos.config();
    push_qos.retransmit = link.has_datagrams();
    let now = Instant::now();
    Some(Session {
        bucket: TokenBucket::new(
            shared.config.rate_per_sec,
            shared.config.rate_burst,
            now.into_std(),
        ),
        control_bucket: TokenBucket::new(
            shared.config.rate_per_sec.saturating_mul(CONTROL_FACTOR),
            shared.config.rate_burst.saturating_mul(CONTROL_FACTOR),
            now.into_std(),
        ),
        acked_cursor: Default::default(),
        head_told: head,
        tail: Vec::new(),
        shared: shared.clone(),
        link,
        id,
        user: login.user_id,
        device: login.device_id,
        platform,
        cmd_rx,
        input,
        push_qos: Sender::new(push_qos, now.into_std()),
        logs: Vec::new(),
        tasks: FuturesUnordered::new(),
        reads: FuturesUnordered::new(),
        last_rx: now,
        order: tern_protocol::send_order::SendOrder::new(next_send_seq),
        chat_datagrams: false,
        recent_results: Default::default(),
        loss: Default::default(),
        loss_fed: now,
        repeat_results_at: None,
        _cluster_watch: cluster_watch,
        group_watches: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(version_lt("1.9.3", "1.10.0"));
        assert!(!version_lt("1.10.0", "1.10"));
        assert!(version_lt("", "0.1"));
        assert!(!version_lt("2", "1.99.99"));
    }
}
