//! Fuzz target: the client's handling of what a server sends (a hostile or broken
//! server), through the sans-IO sync machine and the local store.
//!
//! The input is read as a stream of frames, as the client's reader would; each frame
//! is fed to a logged-in `SyncMachine` with an in-memory store, with time moving on.
//! Properties: nothing panics, whatever the frames; the machine never answers one
//! frame with an unbounded burst (it does not spin); the store stays readable.
#![no_main]

use std::time::{Duration, Instant};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tern_client::store::Db;
use tern_client::sync::{LoginInfo, SyncConfig, SyncMachine};
use tern_protocol::frame;
use tern_protocol::qos::QosConfig;

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut db = Db::open_in_memory("alice").expect("in-memory store");
    let config = SyncConfig {
        qos: QosConfig::uplink(),
        gap_wait: Duration::from_millis(300),
        sync_page: 200,
        full_history_sync: data.first().is_some_and(|b| b & 1 == 1),
        datagram_sends: true,
    };
    let mut sync = SyncMachine::new(config, t0);
    let login = LoginInfo {
        head: data.get(1).copied().unwrap_or(0) as u64,
        next_send_seq: 1,
        send_rate_per_sec: 50,
        send_burst: 200,
        store_generation: data.get(2).copied().unwrap_or(0) as u64,
        restored_seq: data.get(3).copied().unwrap_or(0) as u64,
    };
    sync.on_connected(login, t0, &mut db).expect("login");
    while sync.poll_transmit().is_some() {}
    let mut buf = BytesMut::from(data.get(4..).unwrap_or(&[]));
    let mut now = t0;
    while let Ok(Some((_, f))) = frame::decode_buf(&mut buf, 256 * 1024) {
        now += Duration::from_millis(20);
        let _ = sync.handle_frame(f, now, &mut db).expect("store works");
        sync.handle_timeout(now, &mut db).expect("store works");
        let mut out = 0;
        while sync.poll_transmit().is_some() {
            out += 1;
            assert!(out < 10_000, "one frame made the client send without end");
        }
    }
    db.cursor().expect("store readable");
});
