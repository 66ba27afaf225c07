//! # tern-testkit
//!
//! Dev-only helpers that the integration tests of the server, the client core, the relay
//! (`tern-netsim`) share, instead of a copy in each crate's `tests/common`:
//!
//! * [`server`]: an in-process dev server on ephemeral loopback ports, or the binary as
//!   a child process a test can kill;
//! * [`raw`]: a raw protocol client that sends exactly the frames a test means to;
//! * [`client`]: real client cores with an event [`client::Recorder`];
//! * [`until`], [`token`]: waiting for a condition, minting a dev login token.
//!
//! Nothing here ships: the crate is `publish = false` and only ever a dev-dependency.

pub mod any;
pub mod client;
pub mod cluster;
pub mod raw;
pub mod server;
pub mod tcp;

use std::time::{Duration, Instant};

/// How long a test waits for something that should happen.
pub const WAIT: Duration = Duration::from_secs(30);

/// A login token for `user` signed with the dev secret, valid for an hour.
pub fn token(user: &str) -> String {
    tern_server::auth::mint(
        tern_server::config::DEV_TOKEN_SECRET.as_bytes(),
        user,
        None,
        3600,
    )
}

/// Polls `f` every 20 ms until it holds; panics after [`WAIT`] naming `what`.
pub async fn until(what: &str, f: impl FnMut() -> bool) {
    until_within(what, WAIT, f).await
}

/// Polls `f` every 20 ms until it holds; panics after `limit` naming `what`.
pub async fn until_within(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
