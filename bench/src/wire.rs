//! Benchmark 5: bytes on the wire per 20-byte text message, sender to receiver, every
//! overhead included (QUIC headers, AEAD tags, ACKs, Tern framing, the delivered
//! receipt back to the sender).
//!
//! Alice and bob each talk to the server through their own clean `tern-netsim` relay,
//! so each side's packets are counted separately. Heartbeats are pushed out of the
//! window (600 s interval) so only messaging is counted. Two phases: one message at a
//! time (send, wait until bob has it and alice sees Delivered, settle), like a chat;
//! and a pipelined burst, where QUIC packs several frames per packet. The encoded
//! size of each Tern frame involved is listed beside the measurement, and each phase is
//! split by frame kind from the server's own counters (`tern_frame_bytes_total`): what
//! the relay counted beyond those frames is QUIC's (headers, AEAD tags, ACKs).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tern_netsim::{RelayConfig, RelayStats};
use tern_protocol::frame::Frame;
use tern_protocol::heartbeat::{HeartbeatConfig, HeartbeatProfile};
use tern_protocol::pb;

use crate::app::{App, until};
use crate::serverproc::ServerProc;
use crate::ui;

/// Parameters.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// Messages sent one at a time.
    #[arg(long, default_value_t = 100)]
    pub single: usize,
    /// Messages sent as one burst.
    #[arg(long, default_value_t = 1000)]
    pub burst: usize,
}

/// Per-message traffic of one phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Phase {
    /// Messages.
    pub messages: usize,
    /// Sender -> server bytes per message.
    pub sender_up: f64,
    /// Server -> sender bytes per message (SendResult, receipt push).
    pub sender_down: f64,
    /// Server -> receiver bytes per message (push).
    pub receiver_down: f64,
    /// Receiver -> server bytes per message (ACKs).
    pub receiver_up: f64,
    /// Sum.
    pub total: f64,
    /// UDP packets per message, all four legs.
    pub packets: f64,
    /// Tern frames per message by kind and direction, as the server counted them.
    #[serde(default)]
    pub by_kind: Vec<KindBytes>,
    /// Client -> server bytes per message that are not Tern frames: QUIC's headers,
    /// AEAD tags, ACK and stream framing.
    #[serde(default)]
    pub quic_up: f64,
    /// Server -> client bytes per message that are not Tern frames.
    #[serde(default)]
    pub quic_down: f64,
}

/// One frame kind's share of a message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct KindBytes {
    /// Frame kind (`Chat`, `Push`...).
    pub kind: String,
    /// `up` (client -> server) or `down`.
    pub direction: String,
    /// Frames per message.
    pub frames: f64,
    /// Bytes per message (whole frames, Tern header included).
    pub bytes: f64,
}

/// The server's frame counters: (kind, direction) -> (frames, bytes).
type Tally = std::collections::BTreeMap<(String, String), (f64, f64)>;

async fn tally(server: &ServerProc) -> anyhow::Result<Tally> {
    let page = crate::metrics::scrape(server.http).await?;
    let mut t = Tally::new();
    for (metric, bytes) in [
        ("tern_frames_total", false),
        ("tern_frame_bytes_total", true),
    ] {
        for (labels, v) in crate::metrics::samples(&page, metric) {
            let get = |k: &str| labels.iter().find(|l| l.0 == k).map(|l| l.1.clone());
            let (Some(kind), Some(dir)) = (get("kind"), get("direction")) else {
                continue;
            };
            // The server's `in` is the clients' `up`.
            let dir = if dir == "in" { "up" } else { "down" };
            let e = t.entry((kind, dir.to_owned())).or_default();
            if bytes { e.1 = v } else { e.0 = v }
        }
    }
    Ok(t)
}

/// Adds the per-kind split of `n` messages between two tallies to `p`.
fn split(p: &mut Phase, n: usize, t0: &Tally, t1: &Tally) {
    let per = |x: f64| x / n as f64;
    let (mut up, mut down) = (0.0, 0.0);
    for (key, (f1, b1)) in t1 {
        let (f0, b0) = t0.get(key).copied().unwrap_or_default();
        if *f1 - f0 <= 0.0 {
            continue;
        }
        let bytes = per(b1 - b0);
        if key.1 == "up" {
            up += bytes
        } else {
            down += bytes
        }
        p.by_kind.push(KindBytes {
            kind: key.0.clone(),
            direction: key.1.clone(),
            frames: per(f1 - f0),
            bytes,
        });
    }
    p.by_kind.sort_by(|a, b| {
        b.bytes
            .partial_cmp(&a.bytes)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    p.quic_up = p.sender_up + p.receiver_up - up;
    p.quic_down = p.sender_down + p.receiver_down - down;
}

/// Result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Body bytes of each message.
    pub body_bytes: usize,
    /// One at a time.
    pub single: Phase,
    /// Pipelined.
    pub burst: Phase,
    /// Encoded Tern frame sizes (name, bytes), before QUIC.
    pub frames: Vec<(String, usize)>,
}

fn phase(n: usize, a0: RelayStats, a1: RelayStats, b0: RelayStats, b1: RelayStats) -> Phase {
    let per = |x: u64| x as f64 / n as f64;
    let sender_up = per(a1.up.bytes - a0.up.bytes);
    let sender_down = per(a1.down.bytes - a0.down.bytes);
    let receiver_down = per(b1.down.bytes - b0.down.bytes);
    let receiver_up = per(b1.up.bytes - b0.up.bytes);
    let packets = per(a1.up.sent + a1.down.sent + b1.up.sent + b1.down.sent
        - a0.up.sent
        - a0.down.sent
        - b0.up.sent
        - b0.down.sent);
    Phase {
        messages: n,
        sender_up,
        sender_down,
        receiver_down,
        receiver_up,
        total: sender_up + sender_down + receiver_down + receiver_up,
        packets,
        by_kind: vec![],
        quic_up: 0.0,
        quic_down: 0.0,
    }
}

/// Encoded sizes of the frames one message involves.
fn frame_sizes(text: &str) -> Vec<(String, usize)> {
    let id = Bytes::from(vec![0x17u8; 16]);
    let stored = pb::StoredMessage {
        server_msg_id: 123_456,
        client_msg_id: id.clone(),
        sender: "alice".into(),
        recipient: "bob".into(),
        body: Bytes::copy_from_slice(text.as_bytes()),
        client_ts_ms: 1_790_000_000_000,
        server_ts_ms: 1_790_000_000_001,
        ..Default::default()
    };
    let frames = [
        (
            "ChatMessage (sender -> server)",
            Frame::Chat(pb::ChatMessage {
                client_msg_id: id.clone(),
                recipient: "bob".into(),
                body: stored.body.clone(),
                client_ts_ms: stored.client_ts_ms,
                send_seq: 0,
                ..Default::default()
            }),
        ),
        (
            "SendResult (server -> sender)",
            Frame::SendResult(pb::SendResult {
                client_msg_id: id,
                code: 0,
                server_msg_id: 123_456,
                seq: 1_000,
                server_ts_ms: stored.server_ts_ms,
                ..Default::default()
            }),
        ),
        (
            "Push of the message (server -> receiver)",
            Frame::Push(pb::Push {
                entry: Some(pb::TimelineEntry {
                    seq: 1_000,
                    body: Some(pb::timeline_entry::Body::Message(stored)),
                }),
                ..Default::default()
            }),
        ),
        (
            "DeliveryAck (receiver -> server)",
            Frame::DeliveryAck(pb::DeliveryAck {
                cumulative_seq: 1_000,
                seqs: vec![1_000],
                ..Default::default()
            }),
        ),
        (
            "Push of the delivered receipt (server -> sender)",
            Frame::Push(pb::Push {
                entry: Some(pb::TimelineEntry {
                    seq: 1_001,
                    body: Some(pb::timeline_entry::Body::Receipt(pb::Receipt {
                        status: pb::receipt::Status::Delivered as i32,
                        conversation: "bob".into(),
                        by_user: "bob".into(),
                        up_to_server_msg_id: 123_456,
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
        ),
        (
            "DeliveryAck of the receipt (sender -> server)",
            Frame::DeliveryAck(pb::DeliveryAck {
                cumulative_seq: 1_001,
                seqs: vec![1_001],
                ..Default::default()
            }),
        ),
    ];
    frames
        .into_iter()
        .map(|(name, f)| (name.to_owned(), f.encoded_len()))
        .collect()
}

/// Runs the benchmark.
pub(crate) async fn run(args: &Args) -> anyhow::Result<Report> {
    let server = ServerProc::start(&[])?;
    let ra = tern_netsim::start(RelayConfig::new("127.0.0.1:0".parse()?, server.addr)).await?;
    let rb = tern_netsim::start(RelayConfig::new("127.0.0.1:0".parse()?, server.addr)).await?;
    let dir = tempfile::tempdir()?;
    let quiet = |c: &mut tern_client::ClientConfig| {
        let p = HeartbeatProfile {
            min: Duration::from_secs(600),
            max: Duration::from_secs(600),
        };
        c.heartbeat = HeartbeatConfig {
            foreground: p.clone(),
            background: p,
            initial: Duration::from_secs(600),
            ..HeartbeatConfig::default()
        };
    };
    let connect = Duration::from_secs(20);
    let alice = App::start(
        &server,
        ra.local_addr(),
        &dir.path().join("a"),
        "alice",
        connect,
        quiet,
    )
    .await?;
    let bob = App::start(
        &server,
        rb.local_addr(),
        &dir.path().join("b"),
        "bob",
        connect,
        quiet,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let text = |i: usize| format!("{:<20}", format!("msg {i}"));
    assert_eq!(text(1).len(), 20);

    let bar = ui::bar(args.single as u64, "one at a time");
    let (a0, b0, t0) = (ra.stats(), rb.stats(), tally(&server).await?);
    for i in 0..args.single {
        alice.client.send_text("bob", &text(i))?;
        let ok = until(Duration::from_secs(10), || {
            bob.seen.count() > i && *alice.seen.delivered.lock().expect("lock") > i as u64
        })
        .await;
        anyhow::ensure!(ok, "message {i} not delivered within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await; // let the last ACKs go out
        bar.inc(1);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut single = phase(args.single, a0, ra.stats(), b0, rb.stats());
    split(&mut single, args.single, &t0, &tally(&server).await?);
    bar.finish();

    let bar = ui::spinner("burst");
    let (a0, b0, t0) = (ra.stats(), rb.stats(), tally(&server).await?);
    let total = args.single + args.burst;
    for i in args.single..total {
        alice.client.send_text("bob", &text(i))?;
    }
    let all_delivered = || {
        alice
            .client
            .messages(
                tern_client::ConversationKind::Direct,
                "bob",
                None,
                total as u32 + 1,
            )
            .is_ok_and(|m| {
                m.len() == total
                    && m.iter()
                        .all(|m| m.status == tern_client::MessageStatus::Delivered)
            })
    };
    let ok = until(Duration::from_secs(120), || {
        bob.seen.count() >= total && all_delivered()
    })
    .await;
    anyhow::ensure!(
        ok,
        "burst not delivered within 120 s (bob has {} of {total}; delivered events {})",
        bob.seen.count(),
        alice.seen.delivered.lock().expect("lock")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut burst = phase(args.burst, a0, ra.stats(), b0, rb.stats());
    split(&mut burst, args.burst, &t0, &tally(&server).await?);
    ui::done(
        &bar,
        format!(
            "bytes per message: {:.0} one at a time, {:.0} pipelined",
            single.total, burst.total
        ),
    );
    Ok(Report {
        body_bytes: 20,
        single,
        burst,
        frames: frame_sizes(&text(1)),
    })
}
