//! How messages, statuses and groups are printed (text for people, JSON for scripts).

use serde_json::json;
use tern_client::{ConversationKind, Message, MessageStatus};

pub(crate) fn message_json(m: &Message) -> serde_json::Value {
    json!({
        "id": m.server_msg_id,
        "client_id": m.client_msg_id,
        "local_id": m.local_id,
        "from": m.sender,
        "to": m.recipient,
        "conversation": m.conversation,
        "seq": m.seq,
        "text": m.text(),
        "content_type": m.content_type,
        "sent_at": m.server_ts_ms,
        "status": m.status,
        "kind": m.kind,
        "recalled": m.recalled,
        "read_count": m.read_count,
    })
}

pub(crate) fn status_mark(s: &MessageStatus) -> String {
    match s {
        MessageStatus::Pending => "…".into(),
        MessageStatus::Sent => "✓".into(),
        MessageStatus::Delivered => "✓✓".into(),
        MessageStatus::Read => "✓✓ read".into(),
        MessageStatus::Failed { reason } => format!("✗ {reason}"),
    }
}

pub(crate) fn print_message(m: &Message) {
    let text = m.text().map_or_else(
        || format!("<{} bytes, type {}>", m.body.len(), m.content_type),
        str::to_owned,
    );
    let text = if m.recalled {
        "(recalled)".to_owned()
    } else {
        text
    };
    if m.outgoing && m.kind == ConversationKind::Group && m.read_count > 0 {
        println!(
            "[me → {}] {text}  {} read by {}",
            m.recipient,
            status_mark(&m.status),
            m.read_count
        );
    } else if m.outgoing {
        println!("[me → {}] {text}  {}", m.recipient, status_mark(&m.status));
    } else if m.kind == ConversationKind::Group {
        println!("[{} in {}] {text}", m.sender, m.conversation);
    } else {
        println!("[{}] {text}", m.sender);
    }
}

pub(crate) fn print_group(g: &tern_client::GroupInfo) {
    println!(
        "{}  {:?}  owner {}  {} members{}: {}",
        g.id,
        g.name,
        g.owner,
        g.members.len(),
        if g.large { " (large)" } else { "" },
        g.members.join(",")
    );
}
