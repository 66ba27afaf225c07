//! The send side of the sync machine: the outbox goes out in the device's send order,
//! paced to the server's send budget; a deferral pauses it and it goes on from the
//! deferred send; `OUT_OF_ORDER` resends from the server's expected send seq (or
//! renumbers when the device holds no such send); answers settle or fail messages.

use std::time::Instant;

use tern_protocol::frame::FLAG_RETRANSMIT;
use tern_protocol::{ClientMsgId, ErrorCode, pb};

use super::{SERVER_DEFERRAL, SyncEvent, SyncMachine, permanent};
use crate::store::{Applied, Db, DbError};
use crate::types::MessageStatus;

impl SyncMachine {
    /// Sends outbox messages that are not in flight yet, in send order, while the
    /// window and the send budget allow (call when the app queued new messages).
    pub fn flush(&mut self, now: Instant, db: &mut Db) -> Result<(), DbError> {
        self.now = self.now.max(now);
        if self.link.is_none() || !self.qos.has_room() {
            return Ok(());
        }
        if self.paused_until.is_some_and(|t| t > now) {
            return Ok(());
        }
        self.paused_until = None;
        let limit = (self.qos.in_flight() + self.qos.config().window) as u32;
        for (msg, send_seq) in db.outbox_sends(limit)? {
            let Some(id) = ClientMsgId::from_hex(&msg.client_msg_id) else {
                continue;
            };
            if self.qos.is_pending(&id) {
                continue;
            }
            let need = 1.0 + self.reserve;
            if let Some(b) = &mut self.budget {
                if b.available(now) < need {
                    // Paced: the next send goes when the budget allows it, so the
                    // server never has to refuse one.
                    self.paced_at = Some(now + b.time_until(need, now));
                    break;
                }
            }
            let chat = pb::ChatMessage {
                client_msg_id: bytes::Bytes::copy_from_slice(&id.0),
                sender: String::new(),
                recipient: msg.recipient.clone(),
                kind: msg.kind.to_wire(),
                content_type: msg.content_type,
                body: msg.body.clone().into(),
                client_ts_ms: msg.client_ts_ms,
                send_seq,
            };
            // The server stores a device's sends in order: with an earlier one still
            // unanswered, this one's answer may wait for it.
            let behind = self.qos.in_flight() > 0;
            if self.qos.try_send_with(id, chat.clone(), now).is_err() {
                break;
            }
            if behind {
                self.qos.skip_rtt_sample(&id);
            }
            self.send_chat(chat, 0);
        }
        Ok(())
    }

    /// Takes every send with send seq `from` or later out of flight (all, for `from`
    /// 0): they go again, in order, from the outbox.
    pub(super) fn cancel_from(&mut self, from: u64) {
        let ids: Vec<ClientMsgId> = self
            .qos
            .pending()
            .filter(|id| {
                self.qos
                    .payload(id)
                    .is_some_and(|c| from == 0 || c.send_seq >= from)
            })
            .copied()
            .collect();
        for id in ids {
            self.qos.cancel(&id);
        }
    }

    /// The send with send seq `seq`, if it is in flight.
    pub(super) fn in_flight_id(&self, seq: u64) -> Option<ClientMsgId> {
        self.qos
            .pending()
            .find(|id| self.qos.payload(id).is_some_and(|c| c.send_seq == seq))
            .copied()
    }

    pub(super) fn fail(
        &mut self,
        id: &ClientMsgId,
        reason: String,
        db: &mut Db,
    ) -> Result<(), DbError> {
        if let Some(local_id) = db.mark_failed(id, &reason)? {
            self.events.push_back(SyncEvent::Status {
                local_id,
                status: MessageStatus::Failed { reason },
            });
        }
        Ok(())
    }

    pub(super) fn on_send_result(
        &mut self,
        r: pb::SendResult,
        now: Instant,
        db: &mut Db,
    ) -> Result<(), DbError> {
        let Ok(id) = ClientMsgId::from_slice(&r.client_msg_id) else {
            return Ok(());
        };
        let code = ErrorCode::try_from(r.code).unwrap_or(ErrorCode::Internal);
        if code == ErrorCode::Ok {
            self.qos.on_ack(id, now);
            if let Some((local_id, status, released)) =
                db.mark_sent(&id, r.server_msg_id, r.seq, r.server_ts_ms, r.log_seq)?
            {
                self.events
                    .push_back(SyncEvent::Status { local_id, status });
                self.publish(Applied {
                    new_messages: released,
                    ..Applied::default()
                });
            }
            self.flush(now, db)
        } else if code == ErrorCode::OutOfOrder {
            self.on_out_of_order(id, r.expected_send_seq, now, db)
        } else if permanent(code) {
            // The server used up its send seq: the sends behind it are taken.
            self.qos.cancel(&id);
            self.fail(&id, code.as_str_name().to_owned(), db)?;
            self.flush(now, db)
        } else {
            // Deferred (rate limited, busy, storage): not a loss. The outbox pauses and
            // goes on from this send, in order: everything sent after it is taken out of
            // flight too (the server would refuse it as out of order anyway).
            tracing::debug!(id = %id, code = code.as_str_name(), "send deferred by the server");
            let from = self.qos.payload(&id).map_or(0, |c| c.send_seq);
            self.cancel_from(from); // `id` itself has send seq `from`
            self.paused_until = Some(now + SERVER_DEFERRAL);
            Ok(())
        }
    }

    /// The server expects `expected` from this device before the send `id`.
    pub(super) fn on_out_of_order(
        &mut self,
        id: ClientMsgId,
        expected: u64,
        now: Instant,
        db: &mut Db,
    ) -> Result<(), DbError> {
        let Some(sent) = self.qos.payload(&id).map(|c| c.send_seq) else {
            return Ok(()); // an answer to a copy already taken out of flight
        };
        if let Some(gap) = self.in_flight_id(expected) {
            // The gap is being filled. The server holds this send until it is (no need
            // to resend it meanwhile); when the missing one was sent long enough ago,
            // it was lost: resend it now.
            self.qos.on_held(&id, now);
            let lost = self.qos.retransmit_lost(&gap, now);
            tracing::debug!(sent, expected, lost, srtt = ?self.qos.rtt().srtt(), "send held behind a gap");
            if lost {
                if let Some(chat) = self.qos.payload(&gap).cloned() {
                    self.send_chat(chat, FLAG_RETRANSMIT);
                }
            }
            return Ok(());
        }
        if expected < sent {
            if !db.has_send_seq(expected)? {
                // This device already settled `expected`: the answer is older than that
                // (datagrams are reordered). The send stays in flight.
                tracing::debug!(sent, expected, "stale out-of-order answer ignored");
                return Ok(());
            }
            // Sends before this one were deferred or lost: go on from the first of them.
            tracing::debug!(sent, expected, "send out of order; resending from the gap");
            self.cancel_from(expected);
        } else {
            // The server already took numbers this device is still sending (its numbers
            // went back, say after its database was restored): renumber from the
            // server's next.
            tracing::info!(
                sent,
                expected,
                "send numbers behind the server's: renumbering"
            );
            db.renumber_sends(expected)?;
            self.cancel_from(0);
        }
        self.flush(now, db)
    }
}
