//! # tern-ffi
//!
//! uniffi bindings over [`tern_client`] for Kotlin, Swift and Python. Thin by design:
//! no logic lives here.
//!
//! Status: built under the "Bindings and demo apps" issue; this crate currently only
//! fixes its place in the workspace.

pub use tern_client as client;
