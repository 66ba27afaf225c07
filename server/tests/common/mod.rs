//! The server's integration tests use the shared test kit (`tern-testkit`): an
//! in-process server, a raw protocol client, and the binary as a child process.
#![allow(dead_code, unused_imports)]

use std::path::Path;

pub(crate) use tern_testkit::raw::*;
pub(crate) use tern_testkit::server::{Proc, TestServer, api, bearer};
pub(crate) use tern_testkit::token;

/// The `tern-server` binary of this package as a child process on `quic`.
pub(crate) fn spawn_server(data: &Path, quic: &str) -> Proc {
    tern_testkit::server::spawn_server(env!("CARGO_BIN_EXE_tern-server"), data, quic)
}

/// The `tern-server` binary with `extra` flags.
pub(crate) fn spawn_server_with(data: &Path, quic: &str, extra: &[&str]) -> Proc {
    tern_testkit::server::spawn_server_with(env!("CARGO_BIN_EXE_tern-server"), data, quic, extra)
}

/// The `tern-server` binary on `quic` with no TLS-over-TCP or WebSocket listener, for a
/// test that restarts it on the same address and needs QUIC only. In `--dev` those
/// listeners take the QUIC port's number and the next one, and between the two runs
/// another test's outgoing TCP connection can be given either as its ephemeral port:
/// CI once saw the restart fail with "bind TCP on 127.0.0.1:37022: Address already in
/// use".
pub(crate) fn spawn_quic_only(data: &Path, quic: &str) -> Proc {
    spawn_server_with(data, quic, &["--tcp", "off", "--ws", "off"])
}
