//! Helpers shared by the client's end-to-end tests: a real server on loopback, real
//! clients with an event recorder, and polling waits.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_client::{
    Client, ClientConfig, ClientEvent, ConnectionState, ConversationKind, EventListener, Message,
    Platform,
};
use tern_server::config::{Config, DEV_TOKEN_SECRET};
use tern_server::server::ServerHandle;

pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<ClientEvent>>,
}

impl EventListener for Recorder {
    fn on_event(&self, event: ClientEvent) {
        self.events.lock().unwrap().push(event);
    }
}

impl Recorder {
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
}

pub async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn server(dir: &Path) -> ServerHandle {
    server_with(dir, |_| {}).await
}

/// A dev server with test-friendly rate limits and `tune` applied to its config.
pub async fn server_with(dir: &Path, tune: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut config = Config::dev_loopback(dir);
    config.rate_per_sec = 100_000;
    config.rate_burst = 100_000;
    tune(&mut config);
    tern_server::server::start(config).await.unwrap()
}

pub fn client(
    server: &ServerHandle,
    data: &Path,
    user: &str,
    device: &str,
) -> (Client, Arc<Recorder>) {
    client_with(server, data, user, device, |_| {})
}

/// A logged-in client with `tune` applied to its config (platform Android unless changed).
pub fn client_with(
    server: &ServerHandle,
    data: &Path,
    user: &str,
    device: &str,
    tune: impl FnOnce(&mut ClientConfig),
) -> (Client, Arc<Recorder>) {
    let mut config = ClientConfig::new(server.quic_addr.to_string(), data, device);
    config.ca_pem = Some(std::fs::read(&server.cert_path).unwrap());
    config.platform = Platform::Android;
    tune(&mut config);
    let client = Client::new(config).unwrap();
    let recorder = Arc::new(Recorder::default());
    client.set_listener(recorder.clone());
    let token = tern_server::auth::mint(DEV_TOKEN_SECRET.as_bytes(), user, None, 3600);
    client.login(user, &token).unwrap();
    (client, recorder)
}

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

pub fn texts(c: &Client, with: &str) -> Vec<String> {
    let mut m = c
        .messages(ConversationKind::Direct, with, None, 100_000)
        .unwrap();
    m.reverse();
    m.iter().map(|m| m.text().unwrap().to_owned()).collect()
}
