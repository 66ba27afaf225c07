//! Client requests a session answers: sends (`Chat`), read marks, recall, push tokens,
//! history, groups, sync pages, large-group logs and summaries. Each runs off the
//! session loop as a future whose answer frame the loop writes when it is ready.

use tern_protocol::frame::Frame;
use tern_protocol::{ClientMsgId, ErrorCode, is_valid_user_id, pb};

use super::{
    DEFAULT_SYNC_PAGE, End, MAX_SUMMARIES, MAX_SUMMARY_MESSAGES, MAX_SYNC_PAGE, Session, code_name,
    hot,
};
use crate::store::{Fanout, NewMessage, StoreError, store_failure};
use tern_protocol::send_order::Admit;

impl Session {
    /// A send arrived: stored now if it is next in the device's order (with the sends
    /// held behind it), held if it is ahead of a gap, refused `OUT_OF_ORDER` if the
    /// reassembly queue is full (see `order.rs`).
    pub(super) async fn on_send(&mut self, m: pb::ChatMessage) -> Result<(), End> {
        let client_msg_id = m.client_msg_id.clone();
        match self.order.admit(m) {
            Admit::Store(sends) => {
                for m in sends {
                    self.on_chat(m).await?;
                }
                Ok(())
            }
            Admit::Held { expected } => {
                metrics::counter!("tern_sends_held_total").increment(1);
                if !self.chat_datagrams {
                    return Ok(());
                }
                // Tell the client at once which send is missing (it retransmits that
                // one now rather than on its timer); this one stays held.
                let f = failed_send(client_msg_id, StoreError::OutOfOrder { expected });
                self.write(&f, 0).await
            }
            Admit::Refuse { expected } => {
                metrics::counter!("tern_sends_out_of_order_total").increment(1);
                let f = failed_send(client_msg_id, StoreError::OutOfOrder { expected });
                self.write(&f, 0).await
            }
        }
    }

    pub(super) async fn on_chat(&mut self, m: pb::ChatMessage) -> Result<(), End> {
        hot::hot().messages_in.increment(1);
        let cfg = &self.shared.config;
        let kind = pb::ConversationKind::try_from(m.kind).ok();
        let id = ClientMsgId::from_slice(&m.client_msg_id);
        let rejection = if id.is_err() {
            Some(ErrorCode::InvalidArgument)
        } else if !m.sender.is_empty() && m.sender != self.user {
            Some(ErrorCode::NotAllowed)
        } else if m.body.len() > cfg.max_body_bytes as usize {
            Some(ErrorCode::MessageTooLarge)
        } else if kind == Some(pb::ConversationKind::System) {
            // SYSTEM is for the HTTP API only.
            Some(ErrorCode::NotAllowed)
        } else if kind.is_none() {
            Some(ErrorCode::InvalidArgument)
        } else if !is_valid_user_id(&m.recipient) {
            Some(ErrorCode::RecipientNotFound)
        } else {
            None
        };
        if let Some(code) = rejection {
            metrics::counter!("tern_messages_rejected_total").increment(1);
            if m.send_seq == 0 {
                return self.write(&send_result(m.client_msg_id, code), 0).await;
            }
            // Refused for good, but its number is used up in the device's order (so the
            // sends behind it are taken) only if it is the next one: queued now, in
            // order with the sends around it.
            let skipped = self
                .shared
                .store
                .skip_send(&self.user, &self.device, m.send_seq);
            let client_msg_id = m.client_msg_id;
            self.tasks.push(Box::pin(async move {
                Some(match skipped.await {
                    Ok(()) => send_result(client_msg_id, code),
                    Err(e) => failed_send(client_msg_id, e),
                })
            }));
            return Ok(());
        }
        let to_service = kind == Some(pb::ConversationKind::Direct)
            && cfg.service_accounts.contains(&m.recipient);
        let queued = self.shared.store.store_message(NewMessage {
            sender: self.user.clone(),
            client_msg_id: id.expect("checked above"),
            to_service,
            from_backend: false,
            recipient: m.recipient,
            kind: kind.expect("checked above"),
            content_type: m.content_type,
            body: m.body,
            client_ts_ms: m.client_ts_ms,
            require_known_recipient: cfg.require_known_recipient,
            device: self.device.clone(),
            send_seq: m.send_seq,
        });
        let shared = self.shared.clone();
        let session = self.id;
        let client_msg_id = m.client_msg_id;
        let user = self.user.clone();
        self.tasks.push(Box::pin(async move {
            Some(match queued.await {
                Ok(stored) => {
                    if stored.duplicate {
                        metrics::counter!("tern_messages_duplicate_total").increment(1);
                    } else {
                        hot::hot().messages_stored.increment(1);
                        shared.message_stored(&user, to_service, stored.fanout, Some(session));
                    }
                    Frame::SendResult(pb::SendResult {
                        client_msg_id,
                        code: ErrorCode::Ok as i32,
                        server_msg_id: stored.server_msg_id,
                        seq: stored.sender_seq,
                        server_ts_ms: stored.server_ts_ms,
                        log_seq: stored.log_seq,
                        expected_send_seq: 0,
                    })
                }
                Err(e) => failed_send(client_msg_id, e),
            })
        }));
        Ok(())
    }

    /// Runs a request in the background and answers with an [`pb::OpResult`]; on
    /// success the new timeline entries are pushed to the user's sessions (including
    /// this one: a read mark or recall is applied on the device that made it the same
    /// way as on the others).
    pub(super) fn op(
        &mut self,
        request_id: u64,
        what: &'static str,
        run: impl std::future::Future<Output = Result<Vec<Fanout>, StoreError>> + Send + 'static,
    ) {
        let shared = self.shared.clone();
        self.tasks.push(Box::pin(async move {
            let (code, message) = match run.await {
                Ok(fanout) => {
                    shared.fan_out(fanout, None);
                    (ErrorCode::Ok, String::new())
                }
                Err(e) => {
                    let (code, message) = store_failure(e);
                    tracing::debug!(what, code = code_name(code), %message, "request refused");
                    (code, message)
                }
            };
            Some(Frame::OpResult(pb::OpResult {
                request_id,
                code: code as i32,
                message,
            }))
        }));
    }

    pub(super) fn on_mark_read(&mut self, r: pb::MarkRead) {
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        let max = self.shared.config.group_receipts_max_members;
        let kind = pb::ConversationKind::try_from(r.kind).unwrap_or(pb::ConversationKind::Direct);
        self.op(r.request_id, "mark_read", async move {
            valid_conversation(&r.conversation)?;
            store
                .mark_read(&user, kind, &r.conversation, r.up_to_seq, max)
                .await
        });
    }

    pub(super) fn on_recall(&mut self, r: pb::RecallRequest) {
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        let window = self.shared.config.recall_window.as_millis() as u64;
        self.op(r.request_id, "recall", async move {
            store.recall(&user, r.server_msg_id, window).await
        });
    }

    pub(super) fn on_push_token(&mut self, r: pb::PushTokenRequest) {
        let (store, user, device) = (
            self.shared.store.clone(),
            self.user.clone(),
            self.device.clone(),
        );
        let platform = self.platform;
        self.op(r.request_id, "push_token", async move {
            if r.provider.len() > 32 || r.token.len() > 4096 {
                return Err(StoreError::Invalid("push token or provider too long"));
            }
            store
                .set_push_token(&user, &device, platform, &r.provider, &r.token)
                .await
                .map(|_| vec![])
        });
    }

    pub(super) fn on_history(&mut self, r: pb::HistoryRequest) {
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        let limit = if r.limit == 0 {
            DEFAULT_SYNC_PAGE
        } else {
            r.limit.min(MAX_SYNC_PAGE)
        };
        let kind = pb::ConversationKind::try_from(r.kind).unwrap_or(pb::ConversationKind::Direct);
        self.reads.push(Box::pin(async move {
            metrics::counter!("tern_history_pages_total").increment(1);
            let page = match valid_conversation(&r.conversation) {
                Ok(()) => {
                    store
                        .history(&user, kind, &r.conversation, r.before_seq, limit)
                        .await
                }
                Err(e) => Err(e),
            };
            Some(match page {
                Ok((entries, more)) => Frame::HistoryResponse(pb::HistoryResponse {
                    request_id: r.request_id,
                    entries,
                    more,
                    code: ErrorCode::Ok as i32,
                }),
                Err(e) => Frame::HistoryResponse(pb::HistoryResponse {
                    request_id: r.request_id,
                    code: store_failure(e).0 as i32,
                    ..Default::default()
                }),
            })
        }));
    }

    pub(super) fn on_group(&mut self, r: pb::GroupRequest) {
        let shared = self.shared.clone();
        let user = self.user.clone();
        self.reads.push(Box::pin(async move {
            let request_id = r.request_id;
            let outcome = crate::groups::handle(&shared, Some(&user), r.op).await;
            Some(Frame::GroupResponse(match outcome {
                Ok(mut groups) => pb::GroupResponse {
                    request_id,
                    code: ErrorCode::Ok as i32,
                    message: String::new(),
                    more: crate::groups::fit_for_client(&mut groups),
                    groups,
                },
                Err(e) => {
                    let (code, message) = store_failure(e);
                    pb::GroupResponse {
                        request_id,
                        code: code as i32,
                        message,
                        groups: vec![],
                        more: false,
                    }
                }
            }))
        }));
    }

    pub(super) fn on_sync(&mut self, r: pb::SyncRequest) {
        let limit = if r.limit == 0 {
            DEFAULT_SYNC_PAGE
        } else {
            r.limit.min(MAX_SYNC_PAGE)
        };
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        self.reads.push(Box::pin(async move {
            metrics::counter!("tern_sync_pages_total").increment(1);
            // The user's timeline, or (members only) a large group's log.
            let owner = if r.log.is_empty() {
                user.clone()
            } else if valid_conversation(&r.log).is_err() {
                return Some(Frame::error(
                    ErrorCode::InvalidArgument,
                    "invalid log name",
                    r.request_id,
                ));
            } else {
                match store.log_member(&user, &r.log).await {
                    Ok(true) => crate::store::log_key(&r.log),
                    Ok(false) => {
                        return Some(Frame::error(
                            ErrorCode::NotAllowed,
                            "not a member of this large group",
                            r.request_id,
                        ));
                    }
                    Err(e) => {
                        return Some(Frame::error(
                            store_failure(e).0,
                            "sync failed",
                            r.request_id,
                        ));
                    }
                }
            };
            Some(
                match store
                    .timeline(&owner, r.after_seq, r.until_seq, limit)
                    .await
                {
                    Ok(page) => Frame::SyncResponse(pb::SyncResponse {
                        request_id: r.request_id,
                        entries: page.entries,
                        more: page.more,
                        head_seq: page.head_seq,
                        log: r.log,
                    }),
                    Err(e) => Frame::error(store_failure(e).0, "sync failed", r.request_id),
                },
            )
        }));
    }

    pub(super) fn on_logs(&mut self, r: pb::LogsRequest) {
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        let (shared, watches) = (self.shared.clone(), self.group_watches.clone());
        self.reads.push(Box::pin(async move {
            Some(match store.logs(&user, 5).await {
                Ok((groups, more)) => {
                    // In a cluster: this node now receives these groups' log entries.
                    let ids = groups
                        .iter()
                        .map(|g| g.log.clone())
                        .filter(|g| !g.is_empty());
                    super::watch_groups(&shared, &watches, ids.collect());
                    Frame::Logs(pb::Logs {
                        request_id: r.request_id,
                        groups,
                        more,
                    })
                }
                Err(e) => Frame::error(store_failure(e).0, "logs failed", r.request_id),
            })
        }));
    }

    pub(super) fn on_summaries(&mut self, r: pb::SummariesRequest) {
        let limit = if r.limit == 0 {
            50
        } else {
            r.limit.min(MAX_SUMMARIES)
        };
        let last = r.last_messages.min(MAX_SUMMARY_MESSAGES);
        let (store, user) = (self.shared.store.clone(), self.user.clone());
        self.reads.push(Box::pin(async move {
            Some(match store.summaries(&user, last, limit).await {
                Ok(page) => Frame::Summaries(pb::Summaries {
                    request_id: r.request_id,
                    conversations: page.conversations,
                    head_seq: page.head_seq,
                    more: page.more,
                }),
                Err(e) => Frame::error(store_failure(e).0, "summaries failed", r.request_id),
            })
        }));
    }
}

/// A conversation (peer user or group id) a client named: checked before it reaches
/// the store (a 250 KB name would otherwise be stored and logged).
fn valid_conversation(id: &str) -> Result<(), StoreError> {
    if is_valid_user_id(id) {
        Ok(())
    } else {
        Err(StoreError::Invalid("invalid conversation id"))
    }
}

/// The `SendResult` of a send the store did not take: the code, and for
/// `OUT_OF_ORDER` the device's next send seq.
fn failed_send(client_msg_id: bytes::Bytes, e: StoreError) -> Frame {
    let expected_send_seq = match e {
        StoreError::OutOfOrder { expected } => expected,
        _ => 0,
    };
    Frame::SendResult(pb::SendResult {
        client_msg_id,
        code: store_failure(e).0 as i32,
        expected_send_seq,
        ..Default::default()
    })
}

pub(super) fn send_result(client_msg_id: bytes::Bytes, code: ErrorCode) -> Frame {
    Frame::SendResult(pb::SendResult {
        client_msg_id,
        code: code as i32,
        ..Default::default()
    })
}
