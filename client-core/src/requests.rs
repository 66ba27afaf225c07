//! The calls that need the server's answer: group operations, recall, push tokens and
//! history pages. Each is one request frame sent through the connection task and a
//! blocking wait (up to [`CALL_TIMEOUT`]) for the frame that answers it.

use std::time::Duration;

use tern_protocol::frame::Frame;
use tern_protocol::{ErrorCode, pb};

use crate::connection::{self, Command};
use crate::store::LocalPage;
use crate::types::{ConnectionState, ConversationKind, GroupInfo, HistoryPage};
use crate::{Client, ClientError};

/// How long a request to the server may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(15);

fn refused(code: i32, message: String) -> ClientError {
    ClientError::Refused {
        code: ErrorCode::try_from(code)
            .unwrap_or(ErrorCode::Internal)
            .as_str_name()
            .to_owned(),
        message,
    }
}

impl Client {
    /// Sends a request to the server and waits for its answer (up to 15 s).
    fn call(&self, frame: Frame) -> Result<Frame, ClientError> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        if self
            .inner
            .commands
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return Err(ClientError::NotLoggedIn);
        }
        if *self.inner.state.borrow() != ConnectionState::Connected {
            return Err(ClientError::NotConnected);
        }
        self.inner
            .command(Command::Call(connection::Call { frame, reply }));
        match rx.recv_timeout(CALL_TIMEOUT) {
            Ok(Ok(Frame::Error(e))) => Err(refused(e.code, e.message)),
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(ClientError::NotConnected),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(ClientError::Timeout),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::NotConnected),
        }
    }

    fn call_op(&self, frame: Frame) -> Result<(), ClientError> {
        match self.call(frame)? {
            Frame::OpResult(r) if r.code == ErrorCode::Ok as i32 => Ok(()),
            Frame::OpResult(r) => Err(refused(r.code, r.message)),
            other => Err(refused(
                ErrorCode::Internal as i32,
                format!("unexpected {:?}", other.kind()),
            )),
        }
    }

    fn call_group(&self, op: pb::group_request::Op) -> Result<Vec<GroupInfo>, ClientError> {
        let frame = Frame::GroupRequest(pb::GroupRequest {
            request_id: 0,
            op: Some(op),
        });
        match self.call(frame)? {
            Frame::GroupResponse(r) if r.code == ErrorCode::Ok as i32 => {
                Ok(r.groups.into_iter().map(GroupInfo::from).collect())
            }
            Frame::GroupResponse(r) => Err(refused(r.code, r.message)),
            other => Err(refused(
                ErrorCode::Internal as i32,
                format!("unexpected {:?}", other.kind()),
            )),
        }
    }

    /// Creates a group owned by this user with `members` (needs a connection).
    pub fn create_group(&self, name: &str, members: &[String]) -> Result<GroupInfo, ClientError> {
        self.create_group_with(name, members, false)
    }

    /// Creates a **large group** (read diffusion): up to the server's
    /// `max_large_group_members`; its messages are stored once in a group log that
    /// members pull, so a message costs the server the same at 100 or 100,000 members.
    /// No per-member read counts, no offline push webhook.
    pub fn create_large_group(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<GroupInfo, ClientError> {
        self.create_group_with(name, members, true)
    }

    fn create_group_with(
        &self,
        name: &str,
        members: &[String],
        large: bool,
    ) -> Result<GroupInfo, ClientError> {
        use pb::group_request::{Create, Op};
        self.call_group(Op::Create(Create {
            name: name.to_owned(),
            members: members.to_vec(),
            large,
        }))?
        .pop()
        .ok_or(ClientError::NotFound)
    }

    /// Adds members (any member may).
    pub fn add_group_members(
        &self,
        group: &str,
        members: &[String],
    ) -> Result<GroupInfo, ClientError> {
        use pb::group_request::{Members, Op};
        self.call_group(Op::Add(Members {
            group: group.to_owned(),
            members: members.to_vec(),
        }))?
        .pop()
        .ok_or(ClientError::NotFound)
    }

    /// Removes members (only the owner may).
    pub fn remove_group_members(
        &self,
        group: &str,
        members: &[String],
    ) -> Result<GroupInfo, ClientError> {
        use pb::group_request::{Members, Op};
        self.call_group(Op::Remove(Members {
            group: group.to_owned(),
            members: members.to_vec(),
        }))?
        .pop()
        .ok_or(ClientError::NotFound)
    }

    /// Leaves a group (an owner hands it to the longest-standing member).
    pub fn leave_group(&self, group: &str) -> Result<(), ClientError> {
        use pb::group_request::{Group, Op};
        self.call_group(Op::Leave(Group {
            group: group.to_owned(),
        }))
        .map(|_| ())
    }

    /// A group's members and owner (members only).
    pub fn group_info(&self, group: &str) -> Result<GroupInfo, ClientError> {
        use pb::group_request::{Group, Op};
        self.call_group(Op::Info(Group {
            group: group.to_owned(),
        }))?
        .pop()
        .ok_or(ClientError::NotFound)
    }

    /// Every group this user is in.
    pub fn groups(&self) -> Result<Vec<GroupInfo>, ClientError> {
        use pb::group_request::{List, Op};
        self.call_group(Op::List(List {}))
    }

    /// Recalls one of this user's messages (within the server's recall window): its
    /// content is erased on every device, which get [`ClientEvent::MessageUpdated`].
    pub fn recall(&self, local_id: i64) -> Result<(), ClientError> {
        let m = self
            .inner
            .with_db(|db| db.message(local_id))?
            .ok_or(ClientError::NotFound)?;
        let (true, Some(server_msg_id)) = (m.outgoing, m.server_msg_id) else {
            return Err(ClientError::NotFound);
        };
        self.call_op(Frame::RecallRequest(pb::RecallRequest {
            request_id: 0,
            server_msg_id,
        }))
    }

    /// Registers this device's push token for offline pushes (`provider` is passed to
    /// the deployment's push webhook, e.g. `apns` or `fcm`); an empty token removes it.
    pub fn register_push_token(&self, provider: &str, token: &str) -> Result<(), ClientError> {
        self.call_op(Frame::PushTokenRequest(pb::PushTokenRequest {
            request_id: 0,
            provider: provider.to_owned(),
            token: token.to_owned(),
        }))
    }

    /// A page of a conversation's history, newest first, older than the message
    /// `before` (a `local_id`; `None` = from the newest). Served from the local store
    /// when the held ranges prove it complete, otherwise fetched from the server
    /// (needs a connection) and stored. `at_beginning` is true only when no older
    /// message exists anywhere, never just because the device lacks them.
    pub fn load_history(
        &self,
        kind: ConversationKind,
        conversation: &str,
        before: Option<i64>,
        limit: u32,
    ) -> Result<HistoryPage, ClientError> {
        let limit = limit.clamp(1, 500);
        let mut fetched = false;
        loop {
            match self
                .inner
                .with_db(|db| db.local_history(kind, conversation, before, limit))?
            {
                LocalPage::Complete(messages, at_beginning) => {
                    return Ok(HistoryPage {
                        messages,
                        at_beginning,
                    });
                }
                LocalPage::Fetch { .. } if fetched => {
                    // The server had nothing more to give for this anchor.
                    let messages = self
                        .inner
                        .with_db(|db| db.messages(kind, conversation, before, limit))?;
                    return Ok(HistoryPage {
                        messages,
                        at_beginning: true,
                    });
                }
                LocalPage::Fetch { before_seq } => {
                    let frame = self.call(Frame::HistoryRequest(pb::HistoryRequest {
                        request_id: 0,
                        kind: kind.to_wire(),
                        conversation: conversation.to_owned(),
                        before_seq,
                        limit,
                    }))?;
                    let Frame::HistoryResponse(page) = frame else {
                        return Err(refused(
                            ErrorCode::Internal as i32,
                            "unexpected answer".into(),
                        ));
                    };
                    if page.code != ErrorCode::Ok as i32 {
                        return Err(refused(page.code, "history refused".into()));
                    }
                    let applied = self.inner.with_db(|db| {
                        db.store_history(kind, conversation, before_seq, &page.entries, page.more)
                    })?;
                    if !applied.conversations.is_empty() {
                        self.inner.emit_conversation(kind, conversation);
                    }
                    fetched = true;
                }
            }
        }
    }
}
