//! Reaching the server: the trusted roots, the QUIC endpoint, the TLS name, the
//! handshake, the login on a new link, and the racing of fresh handshakes while a path
//! is suspect. The session (`session.rs`) and the other transports (`transport.rs`)
//! use these; no session state lives here.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tern_protocol::frame::{DEFAULT_MAX_FRAME_BODY, Frame};
use tern_protocol::io::read_frame;
use tern_protocol::link::{Link, Reader};
use tern_protocol::{ErrorCode, pb};
use tokio::time::{Instant, sleep_until, timeout};

use super::{CONNECT_TIMEOUT, MAX_PROBES, PROBE_HANDSHAKE, PROBE_INTERVAL, WRITE_TIMEOUT};
use crate::Inner;

/// A connection that completed its login: its link, the read side, bytes read past
/// the login result, and the result.
pub(crate) type Connected = (Link, Reader, BytesMut, pb::LoginResult);

pub(crate) enum ConnectError {
    Refused(ErrorCode, String),
    Failed(String),
}

/// The certificates this client trusts: the configured PEM, or the web PKI roots.
pub(crate) fn trust_roots(inner: &Inner) -> Result<rustls::RootCertStore, String> {
    let cfg = &inner.config;
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_pem {
        Some(pem) => {
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                let cert = cert.map_err(|e| format!("bad CA PEM: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad CA certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("CA PEM holds no certificate".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

pub(crate) fn endpoint(inner: &Inner) -> Result<quinn::Endpoint, String> {
    let cfg = &inner.config;
    let mut client = tern_protocol::io::client_config(trust_roots(inner)?)?;
    let mut transport = quinn::TransportConfig::default();
    // Liveness is the smart heartbeat's job; QUIC must outlast its longest interval.
    let idle = cfg.heartbeat.background.max + Duration::from_secs(120);
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(idle).map_err(|e| e.to_string())?,
    ));
    transport.max_concurrent_bidi_streams(0u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    tern_protocol::io::set_congestion(&mut transport, cfg.congestion);
    client.transport_config(Arc::new(transport));
    let bind: std::net::SocketAddr = "[::]:0".parse().expect("valid");
    let mut endpoint = quinn::Endpoint::client(bind)
        .or_else(|_| quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid")))
        .map_err(|e| format!("cannot bind a UDP socket: {e}"))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// The TLS name of the server: the configured one, or the host of the first `server`
/// entry (the TCP and WebSocket transports' default).
pub(crate) fn tls_name(cfg: &crate::ClientConfig) -> String {
    tls_name_for(cfg, &crate::servers::first(&cfg.server))
}

/// The TLS name for the `server` entry `entry`: the configured one, or its host.
pub(crate) fn tls_name_for(cfg: &crate::ClientConfig, entry: &str) -> String {
    cfg.server_name
        .clone()
        .unwrap_or_else(|| server_name(entry))
}

pub(crate) fn server_name(server: &str) -> String {
    let host = server
        .rsplit_once(':')
        .map_or(server, |(h, _)| h)
        .trim_matches(['[', ']']);
    if host.parse::<std::net::IpAddr>().is_ok() {
        "localhost".into()
    } else {
        host.into()
    }
}

pub(crate) async fn connect(
    inner: &Inner,
    endpoint: &quinn::Endpoint,
    user: &str,
    token: &str,
    handshake_timeout: Duration,
) -> Result<Connected, ConnectError> {
    let conn = handshake(inner, endpoint, handshake_timeout).await?;
    login_on(inner, conn, user, token).await
}

/// The QUIC handshake alone (probes race only this part, so two of them can never both
/// log in and displace each other).
pub(super) async fn handshake(
    inner: &Inner,
    endpoint: &quinn::Endpoint,
    handshake_timeout: Duration,
) -> Result<quinn::Connection, ConnectError> {
    let cfg = &inner.config;
    let fail = |e: String| ConnectError::Failed(e);
    let candidate = inner.servers.pick().await.map_err(fail)?;
    let addr = candidate.addr;
    let name = tls_name_for(cfg, &candidate.entry);
    let connecting = endpoint
        .connect(addr, &name)
        .map_err(|e| fail(e.to_string()))?;
    let conn = timeout(handshake_timeout, connecting).await;
    match conn {
        Ok(Ok(conn)) => {
            inner.servers.connected(addr);
            Ok(conn)
        }
        Ok(Err(e)) => {
            inner.servers.failed(addr);
            Err(fail(format!("{addr}: {e}")))
        }
        Err(_) => {
            inner.servers.failed(addr);
            Err(fail(format!("{addr}: connect timed out")))
        }
    }
}

/// Logs in on a connection whose handshake completed.
pub(super) async fn login_on(
    inner: &Inner,
    conn: quinn::Connection,
    user: &str,
    token: &str,
) -> Result<Connected, ConnectError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ConnectError::Failed(e.to_string()))?;
    login_link(
        inner,
        Link::Quic { conn, send },
        Reader::Quic(recv),
        user,
        token,
    )
    .await
}

/// Logs in on a link (QUIC's session stream, or a TLS byte stream).
pub(crate) async fn login_link(
    inner: &Inner,
    mut link: Link,
    mut reader: Reader,
    user: &str,
    token: &str,
) -> Result<Connected, ConnectError> {
    let cfg = &inner.config;
    let fail = |e: String| ConnectError::Failed(e);
    let cursor = inner
        .with_db(|db| db.cursor())
        .map_err(|e| fail(e.to_string()))?;
    let login = Frame::Login(pb::Login {
        user_id: user.into(),
        token: token.into(),
        device_id: cfg.device_id.clone(),
        platform: cfg.platform as i32,
        client_version: cfg.client_version.clone(),
        inbox_cursor: cursor,
    });
    link.write_stream(&login.to_bytes(0), WRITE_TIMEOUT)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(4096);
    let answer = async {
        match &mut reader {
            Reader::Quic(r) => read_frame(r, &mut buf, DEFAULT_MAX_FRAME_BODY).await,
            Reader::Stream(r) => read_frame(r, &mut buf, DEFAULT_MAX_FRAME_BODY).await,
        }
    };
    match timeout(CONNECT_TIMEOUT, answer).await {
        Ok(Ok(Some((_, Frame::LoginResult(r))))) => {
            let code = ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Internal);
            if code != ErrorCode::Ok {
                return Err(ConnectError::Refused(code, r.message));
            }
            Ok((link, reader, buf, r))
        }
        Ok(Ok(Some((_, Frame::Error(e))))) => Err(ConnectError::Refused(
            ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
            e.message,
        )),
        Ok(Ok(other)) => Err(fail(format!("unexpected answer to login: {other:?}"))),
        Ok(Err(e)) => Err(fail(e.to_string())),
        Err(_) => Err(fail("login timed out".into())),
    }
}

/// Connects like [`connect`], but starts a fresh handshake every [`PROBE_INTERVAL`]
/// (at most [`MAX_PROBES`] under way, each given [`PROBE_HANDSHAKE`]) until one logs in,
/// the server refuses the login, or `budget` has passed. A handshake's own
/// retransmissions back off; a fresh one's first packet goes at once, so this connects
/// within one interval of a dead path coming back.
pub(crate) async fn connect_racing(
    inner: &Arc<Inner>,
    endpoint: &quinn::Endpoint,
    user: &str,
    token: &str,
    budget: Duration,
) -> Result<Connected, ConnectError> {
    let end = Instant::now() + budget;
    let mut attempts: tokio::task::JoinSet<Result<quinn::Connection, ConnectError>> =
        tokio::task::JoinSet::new();
    let mut next = Instant::now();
    let mut last = ConnectError::Failed("connect timed out".into());
    loop {
        let may_start = attempts.len() < MAX_PROBES && next < end;
        if !may_start && attempts.is_empty() {
            return Err(last);
        }
        tokio::select! {
            _ = sleep_until(next), if may_start => {
                let (inner, endpoint) = (inner.clone(), endpoint.clone());
                attempts.spawn(async move { handshake(&inner, &endpoint, PROBE_HANDSHAKE).await });
                next = Instant::now() + PROBE_INTERVAL;
            }
            Some(done) = attempts.join_next(), if !attempts.is_empty() => match done {
                Ok(Ok(conn)) => {
                    attempts.abort_all();
                    return login_on(inner, conn, user, token).await;
                }
                Ok(Err(e)) => last = e,
                Err(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_name_from_server_address() {
        assert_eq!(server_name("127.0.0.1:7443"), "localhost");
        assert_eq!(server_name("[::1]:7443"), "localhost");
        assert_eq!(server_name("chat.example.com:443"), "chat.example.com");
    }
}
