//! The write operations a store backend queues and the replies they get: one list for
//! every backend, so each backend's writer (SQLite's thread, PostgreSQL's lanes) runs
//! the same jobs with the same meaning.

use base64::Engine as _;
use tern_protocol::{ClientMsgId, pb};

use super::{Fanout, GroupLimits, GroupOp, GroupOutcome, NewMessage, StoredMessage};

/// One queued write.
pub(crate) enum WriteOp {
    Store(NewMessage),
    Ack {
        user: String,
        device: String,
        seq: u64,
    },
    Login {
        user: String,
        device: String,
    },
    Flush,
    Group(GroupOp, GroupLimits),
    MarkRead {
        user: String,
        kind: pb::ConversationKind,
        conversation: String,
        up_to_seq: u64,
        group_receipts_max: usize,
    },
    Recall {
        user: String,
        server_msg_id: u64,
        window_ms: u64,
    },
    PushToken {
        user: String,
        device: String,
        platform: pb::Platform,
        provider: String,
        token: String,
    },
    WebhookEnqueue(String, Vec<u8>),
    WebhookDone(u64),
    WebhookRetry(u64, u64),
    SkipSend {
        user: String,
        device: String,
        send_seq: u64,
    },
}

/// What a write produced.
pub(crate) enum WriteReply {
    Stored(StoredMessage),
    Fanout(Vec<Fanout>),
    Group(GroupOutcome),
    Done,
}

/// The JSON a business backend receives for a message to a service account.
pub(crate) fn c2s_payload(m: &pb::StoredMessage) -> Vec<u8> {
    let client_msg_id = ClientMsgId::from_slice(&m.client_msg_id)
        .map(|i| i.to_hex())
        .unwrap_or_default();
    serde_json::to_vec(&serde_json::json!({
        "type": "message",
        "server_msg_id": m.server_msg_id,
        "client_msg_id": client_msg_id,
        "sender": m.sender,
        "recipient": m.recipient,
        "content_type": m.content_type,
        "text": std::str::from_utf8(&m.body).ok(),
        "body_base64": base64::engine::general_purpose::STANDARD.encode(&m.body),
        "client_ts_ms": m.client_ts_ms,
        "server_ts_ms": m.server_ts_ms,
    }))
    .expect("a JSON value always serialises")
}
