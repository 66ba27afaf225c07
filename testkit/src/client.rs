//! Real client cores for tests: a [`Recorder`] that keeps every event, a logged-in
//! [`client_with`], and waits on the connection state.

use std::path::Path;
use std::sync::{Arc, Mutex};

use tern_client::{
    Client, ClientConfig, ClientEvent, ConnectionState, ConversationKind, EventListener, Message,
    MessageStatus, Platform,
};
use tern_server::server::ServerHandle;

use crate::{WAIT, token};

/// Keeps every event a client emits.
#[derive(Default)]
pub struct Recorder {
    /// The events, in order.
    pub events: Mutex<Vec<ClientEvent>>,
}

impl EventListener for Recorder {
    fn on_event(&self, event: ClientEvent) {
        self.events.lock().unwrap().push(event);
    }
}

impl Recorder {
    /// Messages announced as received, in announcement order.
    pub fn received(&self) -> Vec<Message> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ClientEvent::MessageReceived(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    /// The texts of [`Recorder::received`].
    pub fn texts(&self) -> Vec<String> {
        self.received()
            .iter()
            .map(|m| m.text().unwrap_or_default().to_owned())
            .collect()
    }

    /// Connection states, in order.
    pub fn states(&self) -> Vec<ConnectionState> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ClientEvent::ConnectionStateChanged(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// The transports announced by `TransportChanged`, in order.
    pub fn transports(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ClientEvent::TransportChanged { transport } => Some(transport.clone()),
                _ => None,
            })
            .collect()
    }

    /// How many messages were reported failed.
    pub fn failures(&self) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    ClientEvent::MessageStatusChanged {
                        status: MessageStatus::Failed { .. },
                        ..
                    }
                )
            })
            .count()
    }
}

/// Heartbeats every 2 s instead of 30 s: an idle client learns of a server restart
/// from its next one (answered with a stateless reset). For tests that restart servers.
pub fn quick_heartbeats(c: &mut ClientConfig) {
    c.heartbeat.foreground.min = std::time::Duration::from_secs(1);
    c.heartbeat.initial = std::time::Duration::from_secs(2);
}

/// A client of `server` logged in as `user` on `device` (platform Android).
pub fn client(
    server: &ServerHandle,
    data: &Path,
    user: &str,
    device: &str,
) -> (Client, Arc<Recorder>) {
    client_with(server, data, user, device, |_| {})
}

/// A logged-in client of `server` with `tune` applied to its config.
pub fn client_with(
    server: &ServerHandle,
    data: &Path,
    user: &str,
    device: &str,
    tune: impl FnOnce(&mut ClientConfig),
) -> (Client, Arc<Recorder>) {
    let pem = std::fs::read(&server.cert_path).unwrap();
    client_at(
        &server.quic_addr.to_string(),
        &pem,
        data,
        user,
        device,
        tune,
    )
}

/// A logged-in client of the server at `addr` (or a relay in front of it) that trusts
/// `ca_pem`.
pub fn client_at(
    addr: &str,
    ca_pem: &[u8],
    data: &Path,
    user: &str,
    device: &str,
    tune: impl FnOnce(&mut ClientConfig),
) -> (Client, Arc<Recorder>) {
    let mut config = ClientConfig::new(addr.to_owned(), data, device);
    config.ca_pem = Some(ca_pem.to_vec());
    config.platform = Platform::Android;
    tune(&mut config);
    let client = Client::new(config).unwrap();
    let recorder = Arc::new(Recorder::default());
    client.set_listener(recorder.clone());
    client.login(user, &token(user)).unwrap();
    (client, recorder)
}

/// Waits until the client is connected (panics after [`WAIT`]).
pub async fn connected(c: &Client) {
    let s = c
        .wait_for_state(WAIT, |s| *s == ConnectionState::Connected)
        .await;
    assert_eq!(
        s,
        Some(ConnectionState::Connected),
        "state is {:?}",
        c.connection_state()
    );
}

/// Whether every message of `c`'s direct conversation with `with` (up to `limit`) has
/// been acknowledged by the server (`Sent` or `Delivered`).
pub fn all_acknowledged(c: &Client, with: &str, limit: u32) -> bool {
    c.messages(ConversationKind::Direct, with, None, limit)
        .unwrap()
        .iter()
        .all(|m| {
            matches!(
                m.status,
                tern_client::MessageStatus::Sent | tern_client::MessageStatus::Delivered
            )
        })
}

/// The texts of a direct conversation as the device shows it, oldest first.
pub fn texts(c: &Client, with: &str) -> Vec<String> {
    let mut m = c
        .messages(ConversationKind::Direct, with, None, 100_000)
        .unwrap();
    m.reverse();
    m.iter().map(|m| m.text().unwrap().to_owned()).collect()
}
