//! The client's end-to-end tests use the shared test kit (`tern-testkit`): a real
//! server on loopback, real clients with an event recorder, and polling waits.
#![allow(unused_imports)]

pub(crate) use tern_testkit::client::*;
pub(crate) use tern_testkit::server::{server, server_with};
pub(crate) use tern_testkit::{WAIT, until, until_within};
