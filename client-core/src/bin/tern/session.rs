//! A logged-in CLI session: the client, its events, and waiting for the connection.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tern_client::{Client, ClientConfig, ClientEvent, ConnectionState, EventListener};
use tokio::sync::mpsc;

use crate::*;

pub(crate) struct Forward(mpsc::UnboundedSender<ClientEvent>);

impl EventListener for Forward {
    fn on_event(&self, event: ClientEvent) {
        let _ = self.0.send(event);
    }
}

pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) events: mpsc::UnboundedReceiver<ClientEvent>,
}

impl Session {
    pub(crate) async fn start(cli: &Cli) -> Result<Session, String> {
        let (user, token) = credentials(cli)?;
        let client = Client::new(client_config(cli, &user)?).map_err(|e| e.to_string())?;
        let (tx, events) = mpsc::unbounded_channel();
        client.set_listener(Arc::new(Forward(tx)));
        client.login(&user, &token).map_err(|e| e.to_string())?;
        Ok(Session { client, events })
    }

    /// Waits until connected and caught up (or a terminal state).
    pub(crate) async fn ready(&mut self, timeout: Duration) -> Result<(), String> {
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
    pub(crate) async fn synced(&mut self) {
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

/// `--user` and `--token`, or what to pass.
pub(crate) fn credentials(cli: &Cli) -> Result<(String, String), String> {
    let user = cli
        .user
        .clone()
        .ok_or("--user is required (or TERN_USER)")?;
    let token = cli.token.clone().ok_or(
        "--token is required (or TERN_TOKEN); in development: tern-server token --dev --user <user>",
    )?;
    Ok((user, token))
}

/// The client configuration the global options describe.
pub(crate) fn client_config(cli: &Cli, user: &str) -> Result<ClientConfig, String> {
    let mut config = ClientConfig::new(
        cli.server.clone(),
        cli.data.clone(),
        cli.device.clone().unwrap_or(format!("cli-{user}")),
    );
    config.uplink = match cli.uplink {
        UplinkArg::Datagram => tern_client::Uplink::Datagram,
        UplinkArg::Stream => tern_client::Uplink::Stream,
    };
    config.transport = match cli.transport {
        TransportArg::Auto => tern_client::TransportMode::Auto,
        TransportArg::Quic => tern_client::TransportMode::Quic,
        TransportArg::Tcp => tern_client::TransportMode::Tcp,
        TransportArg::Ws => tern_client::TransportMode::WebSocket,
    };
    config.tcp_server = cli.tcp_server.clone();
    config.ws_server = cli.ws_server.clone();
    config.http_proxy = cli.http_proxy.clone();
    let ca = cli
        .ca
        .clone()
        .or_else(|| Some(PathBuf::from("tern-data/dev-cert.pem")).filter(|p| p.exists()));
    if let Some(path) = ca {
        config.ca_pem =
            Some(std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?);
    }
    Ok(config)
}
