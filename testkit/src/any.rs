//! A raw protocol client on any transport, so a scenario can run once per transport
//! (QUIC, TLS over TCP, WebSocket) with the same code.

use tern_protocol::frame::Frame;
use tern_protocol::{ClientMsgId, pb};

use crate::raw::TestClient;
use crate::server::TestServer;
use crate::tcp::{StreamKind, TcpTestClient};

/// Which transport a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// QUIC (datagrams and the session stream).
    Quic,
    /// TLS over TCP.
    Tcp,
    /// WebSocket over TLS.
    Ws,
}

impl Wire {
    /// Every transport.
    pub const ALL: [Wire; 3] = [Wire::Quic, Wire::Tcp, Wire::Ws];
}

/// A logged-in raw client on one of the transports.
pub enum AnyClient {
    /// Over QUIC.
    Quic(TestClient),
    /// Over a byte stream.
    Stream(TcpTestClient),
}

impl TestServer {
    /// A raw client logged in as `user` on `device` over `wire` (asserts the login).
    pub async fn login_over(&self, wire: Wire, user: &str, device: &str) -> AnyClient {
        let kind = match wire {
            Wire::Quic => return AnyClient::Quic(self.login(user, device).await),
            Wire::Tcp => StreamKind::Tcp,
            Wire::Ws => StreamKind::Ws,
        };
        let addr = match kind {
            StreamKind::Tcp => self.tcp_addr(),
            StreamKind::Ws => self.ws_addr(),
        };
        let (c, r) =
            TcpTestClient::login_kind(kind, addr, self.cert(), user, device, pb::Platform::Android)
                .await;
        assert_eq!(r.code, pb::ErrorCode::Ok as i32, "login of {user}: {r:?}");
        AnyClient::Stream(c)
    }
}

impl AnyClient {
    /// Sends a frame.
    pub async fn send(&mut self, frame: Frame) {
        match self {
            AnyClient::Quic(c) => c.send(frame).await,
            AnyClient::Stream(c) => c.send(frame).await,
        }
    }

    /// The next frame, or `None` when the server closed the connection.
    pub async fn recv(&mut self) -> Option<Frame> {
        match self {
            AnyClient::Quic(c) => c.recv().await,
            AnyClient::Stream(c) => c.recv().await,
        }
    }

    /// The next frame matching `pred`, skipping others.
    pub async fn recv_until(&mut self, pred: impl FnMut(&Frame) -> bool) -> Frame {
        match self {
            AnyClient::Quic(c) => c.recv_until(pred).await,
            AnyClient::Stream(c) => c.recv_until(pred).await,
        }
    }

    /// Sends a text to `to`; returns the id used.
    pub async fn chat(&mut self, to: &str, text: &str) -> ClientMsgId {
        match self {
            AnyClient::Quic(c) => c.chat(to, text).await,
            AnyClient::Stream(c) => c.chat(to, text).await,
        }
    }

    /// The next `SendResult`.
    pub async fn send_result(&mut self) -> pb::SendResult {
        match self {
            AnyClient::Quic(c) => c.send_result().await,
            AnyClient::Stream(c) => c.send_result().await,
        }
    }

    /// The next pushed entry.
    pub async fn push(&mut self) -> pb::TimelineEntry {
        match self {
            AnyClient::Quic(c) => c.push().await,
            AnyClient::Stream(c) => c.push().await,
        }
    }

    /// Waits until the server ends the session; returns the error code it ended it
    /// with: QUIC's application close code, or on a stream the code of the last
    /// `Error` frame before the stream ended.
    pub async fn ended_with(&mut self) -> Option<u32> {
        match self {
            AnyClient::Quic(c) => match c.closed().await {
                quinn::ConnectionError::ApplicationClosed(a) => {
                    Some(a.error_code.into_inner() as u32)
                }
                _ => None,
            },
            AnyClient::Stream(c) => {
                let mut code = None;
                while let Some(f) = c.recv().await {
                    if let Frame::Error(e) = f {
                        code = Some(e.code as u32);
                    }
                }
                code
            }
        }
    }
}
