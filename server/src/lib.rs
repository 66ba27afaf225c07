//! # tern-server
//!
//! The store-and-forward QUIC server. One binary, embedded storage by default.
//!
//! * [`config`]: settings from a TOML file, env vars and flags;
//! * [`auth`]: HMAC-signed login tokens and the pluggable [`auth::TokenVerifier`];
//! * [`store`]: the [`store::Store`] trait and its SQLite implementation (durable before ACK);
//! * [`registry`]: who is online, kickout policy, routing of pushes to sessions;
//! * [`state`]: what sessions, groups and the HTTP API share ([`state::Shared`]) and
//!   the routing of committed writes to online sessions;
//! * [`session`]: one QUIC connection: login, requests, push QoS, rate limit;
//! * [`http`]: the HTTP API for business backends and operators, `/metrics`;
//! * [`http_serve`]: its listener, with a connection limit and a header timeout;
//! * [`webhook`]: the offline push bridge and c2s deliveries (durable outbox, signed);
//! * [`server`]: wiring it together, TLS, start-up and graceful shutdown.
//!
//! The protocol logic (frames, retransmission, duplicate filtering) comes from
//! [`tern_protocol`]; this crate is the tokio/quinn driver around it.

pub mod auth;
pub mod cluster;
pub mod config;
pub mod groups;
pub mod http;
pub mod http_serve;
pub mod registry;
pub mod routing;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod webhook;

pub use tern_protocol as protocol;
