//! # tern-protocol
//!
//! Everything the Tern server and client must agree on, and nothing that does I/O.
//!
//! * [`frame`]: the wire format: a 3-byte fixed prefix plus a varint length, then one
//!   protobuf message ([`pb`]). Decoding says explicitly whether a buffer holds a whole
//!   frame, needs more bytes, or is invalid.
//! * [`qos`]: the sender side of Tern's application-level QoS: retransmission timers
//!   that follow the measured RTT, fast retries, stepped back-off, a per-peer memory of
//!   how long recovery took, give-up reporting, and backpressure. A second schedule
//!   reproduces MobileIMSDK so the two can be compared on the same seeds.
//! * [`dedup`]: the receiver side: a bounded duplicate filter.
//! * [`heartbeat`]: the smart heartbeat policy (learned per network, foreground and
//!   background profiles).
//! * [`backoff`]: reconnect back-off with full jitter.
//! * `link` (feature `quinn`): the connection under a session, QUIC or a TLS byte
//!   stream, so one session logic serves every transport; `input` (same feature): its
//!   read side, polled by the server's session loop itself.
//! * [`page`]: the byte budget of one answer (pages, summaries, member lists).
//! * [`rate`]: the send budget (token bucket) the server enforces and the client paces to.
//! * [`redundancy`]: when QoS datagrams go twice (a path measured lossy), and how much
//!   later the copy goes.
//! * [`sim`]: a deterministic network simulator (virtual time, seeded loss, delay,
//!   jitter, reordering, duplication, blackouts) used by the tests and benchmarks.
//!
//! Like `quinn-proto`, every state machine here is *sans-IO*: the caller passes the
//! current time in (`now: Instant`), reads back when it wants to be woken
//! (`poll_timeout`) and what it should send (`poll_event` / return values). The same
//! code therefore runs in the tokio server, in the client core, and in the simulator
//! where a second of virtual time costs microseconds.

pub mod backoff;
pub mod dedup;
pub mod frame;
pub mod heartbeat;
pub mod ids;
#[cfg(feature = "quinn")]
pub mod input;
#[cfg(feature = "tokio")]
pub mod io;
#[cfg(feature = "quinn")]
pub mod link;
pub mod page;
pub mod qos;
pub mod rate;
pub mod redundancy;
pub mod send_order;
pub mod sim;

/// Generated protobuf messages (`proto/tern.proto`).
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/tern.v1.rs"));
}

pub use frame::{Decoded, Frame, FrameError, FrameKind, Header, WIRE_VERSION};
pub use ids::{ClientMsgId, is_valid_user_id, unix_ms};

/// ALPN protocol id of Tern over TLS (QUIC today): both ends offer exactly this.
pub const ALPN: &[u8] = b"tern/1";
pub use pb::ErrorCode;
