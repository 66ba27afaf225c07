//! # tern-server
//!
//! The store-and-forward QUIC server (sessions, auth, kickout, routing, durable
//! storage, sync, HTTP API, metrics). It drives the sans-IO state machines of
//! [`tern_protocol`] with tokio and quinn.
//!
//! Status: the server is being built under the "Server" issue; this crate currently
//! only fixes its place in the workspace.

pub use tern_protocol as protocol;
