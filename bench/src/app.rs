//! `tern-client` instances for the benchmarks that measure the client stack itself
//! (delivery under loss, idle cost, bytes on the wire, catch-up): what an app embeds,
//! with a listener that timestamps what it sees.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_client::{
    Client, ClientConfig, ClientEvent, ConnectionState, EventListener, MessageStatus,
};

use crate::raw::token;
use crate::serverproc::ServerProc;

/// What a client's listener saw.
#[derive(Default)]
pub(crate) struct Seen {
    /// First arrival time of each received text.
    pub received: Mutex<HashMap<String, Instant>>,
    /// The server's timestamp (`server_ts_ms`, taken when its writer stored the
    /// message) of each received text.
    pub server_ts: Mutex<HashMap<String, u64>>,
    /// Outgoing messages reported failed.
    pub failed: Mutex<u64>,
    /// Outgoing messages that reached Delivered.
    pub delivered: Mutex<u64>,
    /// Latest catch-up progress (stored, head).
    pub sync: Mutex<(u64, u64)>,
    /// When each outgoing message (by local id) was first reported stored by the server.
    pub stored_at: Mutex<HashMap<i64, Instant>>,
}

impl EventListener for Seen {
    fn on_event(&self, e: ClientEvent) {
        match e {
            ClientEvent::MessageReceived(m) => {
                if let Some(t) = m.text() {
                    if let Some(ts) = m.server_ts_ms {
                        self.server_ts
                            .lock()
                            .expect("lock")
                            .entry(t.to_owned())
                            .or_insert(ts);
                    }
                    self.received
                        .lock()
                        .expect("lock")
                        .entry(t.to_owned())
                        .or_insert_with(Instant::now);
                }
            }
            ClientEvent::MessageStatusChanged { status, local_id } => {
                if matches!(status, MessageStatus::Sent | MessageStatus::Delivered) {
                    self.stored_at
                        .lock()
                        .expect("lock")
                        .entry(local_id)
                        .or_insert_with(Instant::now);
                }
                match status {
                    MessageStatus::Failed { .. } => *self.failed.lock().expect("lock") += 1,
                    MessageStatus::Delivered => *self.delivered.lock().expect("lock") += 1,
                    _ => {}
                }
            }
            ClientEvent::SyncProgress { stored, head } => {
                *self.sync.lock().expect("lock") = (stored, head);
            }
            _ => {}
        }
    }
}

impl Seen {
    /// Texts received so far.
    pub(crate) fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }
}

/// A logged-in client and what it saw.
pub(crate) struct App {
    /// The client.
    pub client: Client,
    /// Its events.
    pub seen: Arc<Seen>,
}

impl App {
    /// A client for `user` talking to `via` (the server or a relay in front of it),
    /// data in `dir`, configured by `tweak`; logs in and waits up to `connect` for the
    /// connection.
    pub(crate) async fn start(
        server: &ServerProc,
        via: SocketAddr,
        dir: &Path,
        user: &str,
        connect: Duration,
        tweak: impl FnOnce(&mut ClientConfig),
    ) -> anyhow::Result<App> {
        let mut config = ClientConfig::new(via.to_string(), dir, format!("{user}-device"));
        config.ca_pem = Some(server.cert_pem());
        tweak(&mut config);
        let client = Client::new(config)?;
        let seen = Arc::new(Seen::default());
        client.set_listener(seen.clone());
        client.login(user, &token(user))?;
        let state = client
            .wait_for_state(connect, |s| *s == ConnectionState::Connected)
            .await;
        anyhow::ensure!(
            state == Some(ConnectionState::Connected),
            "{user} did not connect within {connect:?}"
        );
        Ok(App { client, seen })
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.client.shutdown();
    }
}

/// Polls `f` every 20 ms until it holds or `limit` passes; returns whether it held.
pub(crate) async fn until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
