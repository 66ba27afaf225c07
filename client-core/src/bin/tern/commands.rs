//! One function per command: send, listen, history, conversations, chat, read,
//! recall and the group commands.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use tern_client::{Client, ClientEvent, ConnectionState, ConversationKind, Message, MessageStatus};
use tokio::io::AsyncBufReadExt;

use crate::*;

/// Connects, then runs `f` (a request that needs the server).
pub(crate) async fn request(
    s: &mut Session,
    f: impl FnOnce(&Client) -> Result<(), tern_client::ClientError>,
) -> ExitCode {
    if let Err(e) = s.ready(Duration::from_secs(15)).await {
        return fail(e);
    }
    match f(&s.client) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

pub(crate) async fn read(s: &mut Session, kind: ConversationKind, with: &str) -> ExitCode {
    if let Err(e) = s.ready(Duration::from_secs(15)).await {
        return fail(e);
    }
    s.synced().await;
    if let Err(e) = s.client.mark_read(kind, with) {
        return fail(e);
    }
    // The mark is queued durably; wait until the server has it so the other devices
    // and the sender learn of it now, not at the next login.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while s.client.unsent_read_marks().unwrap_or(0) > 0 {
        if tokio::time::Instant::now() > deadline {
            return fail(
                "the server did not confirm the read mark (it is sent again at the next login)",
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match s.client.total_unread() {
        Ok(n) => {
            println!("marked {with} read (total unread now {n})");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

pub(crate) async fn group(s: &mut Session, cmd: &GroupCmd) -> ExitCode {
    request(s, |c| {
        match cmd {
            GroupCmd::Create {
                name,
                members,
                large: false,
            } => print_group(&c.create_group(name, members)?),
            GroupCmd::Create {
                name,
                members,
                large: true,
            } => print_group(&c.create_large_group(name, members)?),
            GroupCmd::Add { group, members } => print_group(&c.add_group_members(group, members)?),
            GroupCmd::Remove { group, members } => {
                print_group(&c.remove_group_members(group, members)?)
            }
            GroupCmd::Leave { group } => {
                c.leave_group(group)?;
                println!("left {group}");
            }
            GroupCmd::Info { group } => print_group(&c.group_info(group)?),
            GroupCmd::List => c.groups()?.iter().for_each(print_group),
        }
        Ok(())
    })
    .await
}

/// The message an event shows stored by the server: done once stored, whatever status
/// says so first (a delivered or read receipt can overtake the send's own result).
fn stored(ev: &ClientEvent) -> Option<i64> {
    match ev {
        ClientEvent::MessageStatusChanged {
            local_id,
            status: MessageStatus::Sent | MessageStatus::Delivered | MessageStatus::Read,
        } => Some(*local_id),
        _ => None,
    }
}

pub(crate) async fn send(
    s: &mut Session,
    kind: ConversationKind,
    to: &str,
    text: &str,
    count: Option<u32>,
    timeout: Duration,
) -> ExitCode {
    let texts: Vec<String> = match count {
        Some(n) => (1..=n).map(|i| format!("{text} {i}")).collect(),
        None => vec![text.to_owned()],
    };
    // Messages left in the outbox by an earlier run (say, a killed one) go out too.
    let mut waiting: std::collections::HashMap<i64, Message> = match s.client.outbox() {
        Ok(left) => left.into_iter().map(|m| (m.local_id, m)).collect(),
        Err(e) => return fail(e),
    };
    if !waiting.is_empty() {
        eprintln!(
            "tern: {} message(s) left from an earlier run will be sent first",
            waiting.len()
        );
    }
    for t in &texts {
        match s.client.send_to(kind, to, 0, t.as_bytes()) {
            Ok(m) => {
                waiting.insert(m.local_id, m);
            }
            Err(e) => return fail(e),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while !waiting.is_empty() {
        let ev = match tokio::time::timeout_at(deadline, s.events.recv()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => return fail("client stopped"),
            Err(_) => {
                return fail(format!(
                    "{} message(s) not stored within {}s (they stay in the outbox)",
                    waiting.len(),
                    timeout.as_secs()
                ));
            }
        };
        match ev {
            ClientEvent::MessageStatusChanged { local_id, .. }
                if stored(&ev).is_some() && waiting.contains_key(&local_id) =>
            {
                waiting.remove(&local_id);
                if let Ok(Some(m)) = s.client.message(local_id) {
                    println!(
                        "sent {} server_id={} seq={}",
                        m.text().unwrap_or(""),
                        m.server_msg_id.unwrap_or(0),
                        m.seq.unwrap_or(0)
                    );
                }
            }
            ClientEvent::MessageStatusChanged {
                local_id,
                status: MessageStatus::Failed { reason },
            } if waiting.contains_key(&local_id) => {
                return fail(format!("message {local_id} failed: {reason}"));
            }
            ClientEvent::ConnectionStateChanged(
                st @ (ConnectionState::LoginFailed { .. } | ConnectionState::KickedOut { .. }),
            ) => {
                return fail(format!("{st:?}"));
            }
            _ => {}
        }
    }
    ExitCode::SUCCESS
}

pub(crate) async fn listen(
    s: &mut Session,
    count: Option<u64>,
    timeout: Option<Duration>,
    json: bool,
) -> ExitCode {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut seen = 0u64;
    let mut stdout = std::io::stdout();
    if count == Some(0) {
        return ExitCode::SUCCESS;
    }
    loop {
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, s.events.recv()).await.ok(),
                None => Some(s.events.recv().await),
            }
        };
        let ev = tokio::select! {
            ev = next => ev,
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        };
        match ev {
            None => return fail(format!("timed out after {seen} message(s)")),
            Some(None) => return fail("client stopped"),
            Some(Some(ClientEvent::MessageReceived(m))) => {
                if json {
                    let _ = writeln!(stdout, "{}", message_json(&m));
                } else {
                    print_message(&m);
                }
                let _ = stdout.flush();
                seen += 1;
                if count.is_some_and(|n| seen >= n) {
                    return ExitCode::SUCCESS;
                }
            }
            Some(Some(ClientEvent::ConnectionStateChanged(
                st @ (ConnectionState::LoginFailed { .. } | ConnectionState::KickedOut { .. }),
            ))) => {
                return fail(format!("{st:?}"));
            }
            Some(Some(_)) => {}
        }
    }
}

pub(crate) async fn history(
    s: &mut Session,
    kind: ConversationKind,
    with: &str,
    limit: u32,
    json: bool,
) -> ExitCode {
    let online = match s.ready(Duration::from_secs(15)).await {
        Ok(()) => true,
        Err(e) => {
            eprintln!("tern: {e}; showing local history only");
            false
        }
    };
    s.synced().await;
    let page = if online {
        s.client
            .load_history(kind, with, None, limit)
            .map(|p| p.messages)
    } else {
        s.client.messages(kind, with, None, limit)
    };
    let mut msgs = match page {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    msgs.reverse();
    for m in &msgs {
        if json {
            println!("{}", message_json(m))
        } else {
            print_message(m)
        }
    }
    ExitCode::SUCCESS
}

pub(crate) async fn conversations(s: &mut Session, json: bool) -> ExitCode {
    if let Err(e) = s.ready(Duration::from_secs(15)).await {
        eprintln!("tern: {e}; showing local data only");
    }
    s.synced().await;
    let convs = match s.client.conversations() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    for c in &convs {
        if json {
            println!(
                "{}",
                json!({"id": c.id, "kind": c.kind, "unread": c.unread, "latest_seq": c.latest_seq,
                       "last_message": c.last_message.as_ref().map(message_json)})
            );
        } else {
            let last = c
                .last_message
                .as_ref()
                .and_then(|m| m.text().map(str::to_owned))
                .unwrap_or_default();
            println!("{:<20} unread {:>4}  {last}", c.id, c.unread);
        }
    }
    ExitCode::SUCCESS
}

pub(crate) async fn chat(s: &mut Session, with: &str) -> ExitCode {
    println!("chatting with {with}; type a line and press enter to send, /quit to leave");
    if let Err(e) = s.ready(Duration::from_secs(15)).await {
        eprintln!("tern: {e}; messages will be sent when the connection is back");
    }
    s.synced().await;
    if let Ok(mut recent) = s.client.messages(ConversationKind::Direct, with, None, 20) {
        recent.reverse();
        recent.iter().for_each(print_message);
    }
    let _ = s.client.mark_read(ConversationKind::Direct, with);
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) if line.trim() == "/quit" => return ExitCode::SUCCESS,
                Ok(Some(line)) if line.trim().is_empty() => {}
                Ok(Some(line)) => if let Err(e) = s.client.send_text(with, &line) { eprintln!("tern: {e}") },
                Ok(None) | Err(_) => return ExitCode::SUCCESS,
            },
            ev = s.events.recv() => match ev {
                None => return fail("client stopped"),
                Some(ClientEvent::MessageReceived(m)) if m.conversation == with => {
                    print_message(&m);
                    let _ = s.client.mark_read(ConversationKind::Direct, with);
                }
                Some(ClientEvent::MessageReceived(m)) => println!("(new message from {})", m.sender),
                Some(ClientEvent::MessageStatusChanged { local_id, status }) => {
                    if let Ok(Some(m)) = s.client.message(local_id) {
                        if m.conversation == with {
                            println!("  {} {}", status_mark(&status), m.text().unwrap_or(""));
                        }
                    }
                }
                Some(ClientEvent::ConnectionStateChanged(st)) => match st {
                    ConnectionState::Connected => println!("-- connected"),
                    ConnectionState::WaitingToReconnect { delay_ms } => println!("-- connection lost; retrying in {:.1}s", delay_ms as f64 / 1000.0),
                    ConnectionState::KickedOut { text, .. } => return fail(format!("signed out: {text}")),
                    ConnectionState::LoginFailed { code, message } => return fail(format!("login failed: {code} {message}")),
                    _ => {}
                },
                Some(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_done_whichever_stored_status_comes_first() {
        for status in [
            MessageStatus::Sent,
            MessageStatus::Delivered,
            MessageStatus::Read,
        ] {
            let ev = ClientEvent::MessageStatusChanged {
                local_id: 7,
                status,
            };
            assert_eq!(stored(&ev), Some(7));
        }
        let pending = ClientEvent::MessageStatusChanged {
            local_id: 7,
            status: MessageStatus::Pending,
        };
        assert_eq!(stored(&pending), None);
    }
}
