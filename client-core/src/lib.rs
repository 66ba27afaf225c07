//! # tern-client
//!
//! The client core every app embeds: connection manager, smart heartbeat, reconnect,
//! local SQLite store with a persisted outbox, and sync by sequence gap. It drives the
//! sans-IO state machines of [`tern_protocol`] on a runtime it owns.
//!
//! Status: built under the "Client core" issue; this crate currently only fixes its
//! place in the workspace.

pub use tern_protocol as protocol;
