//! Which transport a client connects with: QUIC first, TLS over TCP where UDP is
//! blocked (RFC 9308: a client should fall back to TCP when UDP fails).
//!
//! * **The race** ([`TransportMode::Auto`]): QUIC starts; if it has not logged in
//!   within the head start (300 ms by default), TCP starts beside it, and the first
//!   session to log in wins (the other attempt is dropped before it logs in).
//! * **Memory**: the transport that worked last on a network label is stored in the
//!   local database and tried first next time; starting on TCP still races QUIC after
//!   the head start, so a network that unblocked UDP is noticed at once.
//! * **Moving back**: while on TCP, the session tries a QUIC handshake every
//!   `quic_reprobe`; when one completes the session moves to it like after a probe
//!   (`End::Moved`): what was in flight is resent on the new session and the server's
//!   idempotency drops what it already had.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tern_protocol::link::{Link, Reader, Transport};
use tokio::time::{sleep, timeout};

use crate::connection::{ConnectError, Connected, connect, connect_racing, login_link};
use crate::{Inner, TransportMode};

/// Connects with the transport(s) the configuration allows, in the order this network
/// worked best last time. `urgent`: sends are waiting after a recent loss (QUIC races
/// fresh handshakes; see `connect_racing`). With several server addresses QUIC races
/// too, each fresh handshake to the next address, so a dead node costs one probe
/// interval, not a handshake timeout.
pub(crate) async fn connect_any(
    inner: &Arc<Inner>,
    endpoint: &quinn::Endpoint,
    user: &str,
    token: &str,
    urgent: bool,
    budget: Duration,
    label: &str,
) -> Result<Connected, ConnectError> {
    let cfg = &inner.config;
    let quic = async {
        if urgent || inner.servers.several() {
            connect_racing(inner, endpoint, user, token, budget).await
        } else {
            connect(inner, endpoint, user, token, budget).await
        }
    };
    match cfg.transport {
        TransportMode::Quic => quic.await,
        TransportMode::Tcp => connect_tcp(inner, user, token, budget).await,
        TransportMode::WebSocket => connect_ws(inner, user, token, budget).await,
        TransportMode::Auto => {
            let tcp_first = inner
                .with_db(|db| db.preferred_transport(label))
                .ok()
                .flatten()
                == Some(Transport::Tcp);
            let head_start = cfg.tcp_head_start;
            let tcp = async {
                if !tcp_first {
                    sleep(head_start).await;
                }
                connect_tcp(inner, user, token, budget).await
            };
            let quic = async {
                if tcp_first {
                    sleep(head_start).await;
                }
                quic.await
            };
            let won = race(quic, tcp).await;
            if let Ok(c) = &won {
                let t = c.0.transport();
                let _ = inner.with_db(|db| db.set_preferred_transport(label, t));
            }
            won
        }
    }
}

/// The first of two attempts to log in; if both fail, the more telling error (a
/// refusal beats a failure).
async fn race<A, B>(a: A, b: B) -> Result<Connected, ConnectError>
where
    A: std::future::Future<Output = Result<Connected, ConnectError>>,
    B: std::future::Future<Output = Result<Connected, ConnectError>>,
{
    tokio::pin!(a);
    tokio::pin!(b);
    let (mut a_done, mut b_done) = (None, None);
    loop {
        tokio::select! {
            r = &mut a, if a_done.is_none() => match r {
                Ok(c) => return Ok(c),
                Err(e) => a_done = Some(e),
            },
            r = &mut b, if b_done.is_none() => match r {
                Ok(c) => return Ok(c),
                Err(e) => b_done = Some(e),
            },
        }
        if let (Some(ea), Some(eb)) = (&a_done, &b_done) {
            let refused = |e: &ConnectError| matches!(e, ConnectError::Refused(..));
            return Err(if refused(eb) && !refused(ea) {
                b_done.take().expect("set")
            } else {
                a_done.take().expect("set")
            });
        }
    }
}

/// A TLS 1.3 connection over TCP to `server` with `alpn`, the same trust as QUIC.
async fn tls_over_tcp(
    inner: &Arc<Inner>,
    server: &str,
    alpn: &[u8],
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    ),
    ConnectError,
> {
    let cfg = &inner.config;
    let fail = |e: String| ConnectError::Failed(e);
    let (tcp, remote) = match &cfg.http_proxy {
        Some(proxy) => through_proxy(proxy, server).await.map_err(fail)?,
        None => {
            let tcp = tokio::net::TcpStream::connect(server)
                .await
                .map_err(|e| fail(format!("TCP connect {server}: {e}")))?;
            let remote = tcp.peer_addr().map_err(|e| fail(e.to_string()))?;
            (tcp, remote)
        }
    };
    let _ = tcp.set_nodelay(true);
    let roots = crate::connection::trust_roots(inner).map_err(fail)?;
    let mut tls = tern_protocol::io::tls_client_config(roots).map_err(fail)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let name =
        ServerName::try_from(crate::connection::tls_name(cfg)).map_err(|e| fail(e.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS over TCP: {e}")))?;
    Ok((stream, remote))
}

/// WebSocket over TLS (`wss://host:port/tern`, ALPN `http/1.1`), then the login.
pub(crate) async fn connect_ws(
    inner: &Arc<Inner>,
    user: &str,
    token: &str,
    budget: Duration,
) -> Result<Connected, ConnectError> {
    let cfg = &inner.config;
    let fail = |e: String| ConnectError::Failed(e);
    let first = crate::servers::first(&cfg.server);
    let server = cfg
        .ws_server
        .clone()
        .unwrap_or_else(|| match first.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(p) => format!("{host}:{}", p.wrapping_add(1)),
                Err(_) => first.clone(),
            },
            None => first.clone(),
        });
    let attempt = async {
        let (tls, remote) = tls_over_tcp(inner, &server, b"http/1.1").await?;
        let url = format!("wss://{}/tern", crate::connection::tls_name(cfg));
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            url,
            tls,
            Some(tern_protocol::link::websocket_config()),
        )
        .await
        .map_err(|e| fail(format!("WebSocket upgrade: {e}")))?;
        let (read, write) = tern_protocol::link::websocket_stream(ws);
        Ok((
            Link::Stream {
                transport: Transport::WebSocket,
                send: write,
                remote,
            },
            Reader::Stream(read),
        ))
    };
    login_within(inner, budget, "WebSocket", attempt, user, token).await
}

/// Gives `attempt` (a connection to the server, up to a link and its reader) at most
/// `budget`, then logs in on what it made.
async fn login_within(
    inner: &Arc<Inner>,
    budget: Duration,
    what: &str,
    attempt: impl std::future::Future<Output = Result<(Link, Reader), ConnectError>>,
    user: &str,
    token: &str,
) -> Result<Connected, ConnectError> {
    let (link, reader) = timeout(budget, attempt)
        .await
        .map_err(|_| ConnectError::Failed(format!("{what} connect timed out")))??;
    login_link(inner, link, reader, user, token).await
}

/// TCP, TLS 1.3 (ALPN `tern/1`, the same trust as QUIC), then the login.
pub(crate) async fn connect_tcp(
    inner: &Arc<Inner>,
    user: &str,
    token: &str,
    budget: Duration,
) -> Result<Connected, ConnectError> {
    let cfg = &inner.config;
    let server = cfg
        .tcp_server
        .clone()
        .unwrap_or_else(|| crate::servers::first(&cfg.server));
    let attempt = async {
        let (stream, remote) = tls_over_tcp(inner, &server, tern_protocol::ALPN).await?;
        let (read, write) = tokio::io::split(stream);
        Ok((
            Link::Stream {
                transport: Transport::Tcp,
                send: Box::new(write),
                remote,
            },
            Reader::Stream(Box::new(read)),
        ))
    };
    login_within(inner, budget, "TCP", attempt, user, token).await
}

/// A TCP connection to `server` through the HTTP proxy at `proxy` (`host:port`):
/// `CONNECT server`, a `200` answer, then the tunnel is the connection (TLS runs inside
/// it, end to end with the server). Returns the tunnel and the proxy's address.
async fn through_proxy(
    proxy: &str,
    server: &str,
) -> Result<(tokio::net::TcpStream, std::net::SocketAddr), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(proxy)
        .await
        .map_err(|e| format!("connect to proxy {proxy}: {e}"))?;
    let remote = tcp.peer_addr().map_err(|e| e.to_string())?;
    let request = format!("CONNECT {server} HTTP/1.1\r\nHost: {server}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("proxy {proxy}: {e}"))?;
    // The answer's head, byte by byte: nothing of the tunnel may be read past it.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8 * 1024 {
            return Err(format!("proxy {proxy}: answer head too long"));
        }
        let mut b = [0u8; 1];
        match tcp.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            Ok(_) => return Err(format!("proxy {proxy} closed the connection")),
            Err(e) => return Err(format!("proxy {proxy}: {e}")),
        }
    }
    let status = String::from_utf8_lossy(&head);
    let ok = status
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code.starts_with('2'));
    if !ok {
        let line = status.lines().next().unwrap_or("").to_owned();
        return Err(format!("proxy {proxy} refused CONNECT {server}: {line}"));
    }
    Ok((tcp, remote))
}
