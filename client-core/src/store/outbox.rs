//! The outbox: messages the app sent, written before the first attempt, and what the
//! server's answers (stored, refused, given up) do to them.

use rusqlite::{OptionalExtension, Transaction, params};
use tern_protocol::ClientMsgId;

use crate::types::{ConversationKind, Message, MessageStatus};

use super::*;

impl Db {
    /// Queues an outgoing message: the message row and its outbox row, atomically.
    pub fn enqueue(
        &mut self,
        id: ClientMsgId,
        to: &str,
        kind: ConversationKind,
        content_type: u32,
        body: &[u8],
        now_ms: u64,
    ) -> Result<Message, DbError> {
        let tx = self.conn.transaction()?;
        exec(
            &tx,
            "INSERT INTO messages (client_msg_id, conversation, conv_kind, sender, recipient, content_type, body, client_ts, outgoing, status)
             VALUES (?1, ?2, ?3, ?4, ?2, ?5, ?6, ?7, 1, ?8)",
            params![&id.0[..], to, kind.to_wire(), self.user, content_type, body, now_ms as i64, MessageStatus::Pending.code()],
        )?;
        let local_id = tx.last_insert_rowid();
        let send_seq = take_send_seq(&tx)?;
        exec(
            &tx,
            "INSERT INTO outbox (local_id, send_seq) VALUES (?1, ?2)",
            params![local_id, send_seq as i64],
        )?;
        touch_conversation(&tx, kind, to, local_id, now_ms, 0)?;
        tx.commit()?;
        Ok(self.message(local_id)?.expect("just inserted"))
    }

    /// The first `limit` outbox messages, in send order.
    pub fn outbox(&self, limit: u32) -> Result<Vec<Message>, DbError> {
        Ok(self
            .outbox_sends(limit)?
            .into_iter()
            .map(|(m, _)| m)
            .collect())
    }

    /// The first `limit` outbox messages with their send seqs, in send order.
    pub fn outbox_sends(&self, limit: u32) -> Result<Vec<(Message, u64)>, DbError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS}, o.send_seq FROM messages JOIN outbox o USING (local_id)
             ORDER BY o.send_seq, o.local_id LIMIT ?1"
        ))?;
        let rows = stmt.query_map(params![limit as i64], |r| {
            Ok((
                row_to_message(r)?,
                r.get::<_, i64>(MESSAGE_COLUMN_COUNT)? as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether an outbox message has send seq `send_seq`.
    pub fn has_send_seq(&self, send_seq: u64) -> Result<bool, DbError> {
        Ok(one(
            &self.conn,
            "SELECT 1 FROM outbox WHERE send_seq = ?1",
            params![send_seq as i64],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
    }

    /// The server takes `next` as this device's next send seq (login, or an
    /// `OUT_OF_ORDER` answer) and the outbox does not hold it: the device's numbers went
    /// back (its database was restored) or ahead of what the server saw. Renumbers the
    /// ordered outbox in order from `next` and continues the counter after it. Returns
    /// how many messages were renumbered.
    pub fn renumber_sends(&mut self, next: u64) -> Result<usize, DbError> {
        let tx = self.conn.transaction()?;
        let ids: Vec<i64> = tx
            .prepare("SELECT local_id FROM outbox WHERE send_seq > 0 ORDER BY send_seq, local_id")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // Two passes: the new numbers may overlap the old ones.
        exec(
            &tx,
            "UPDATE outbox SET send_seq = -send_seq WHERE send_seq > 0",
            [],
        )?;
        for (i, id) in ids.iter().enumerate() {
            exec(
                &tx,
                "UPDATE outbox SET send_seq = ?2 WHERE local_id = ?1",
                params![id, (next + i as u64) as i64],
            )?;
        }
        // The counter continues after the renumbered messages; with none, it only moves
        // forward to the server's next.
        let last = (next + ids.len() as u64).saturating_sub(1);
        if !ids.is_empty() || last > state(&tx, "send_seq")? {
            set_state(&tx, "send_seq", last)?;
        }
        tx.commit()?;
        Ok(ids.len())
    }

    /// One message by client message id.
    pub fn message_by_client_id(&self, id: &ClientMsgId) -> Result<Option<Message>, DbError> {
        Ok(one(
            &self.conn,
            &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE client_msg_id = ?1"),
            params![&id.0[..]],
            row_to_message,
        )
        .optional()?)
    }

    /// The server stored an outgoing message: record its ids, leave the outbox, and
    /// count its seq (an entry of our own timeline, or with `log_seq` of a large
    /// group's log) as stored.
    pub fn mark_sent(
        &mut self,
        id: &ClientMsgId,
        server_msg_id: u64,
        seq: u64,
        server_ts: u64,
        log_seq: u64,
    ) -> Result<Option<(i64, MessageStatus, Vec<Message>)>, DbError> {
        let tx = self.conn.transaction()?;
        let local = local_id_of(&tx, id)?;
        let Some(local_id) = local else {
            return Ok(None);
        };
        let group: Option<String> = if log_seq > 0 {
            Some(one(
                &tx,
                "SELECT conversation FROM messages WHERE local_id = ?1",
                params![local_id],
                |r| r.get(0),
            )?)
        } else {
            None
        };
        let log = group.as_deref();
        let seq = if log.is_some() { log_seq } else { seq };
        exec(
            &tx,
            "UPDATE messages SET log = ?2 WHERE local_id = ?1",
            params![local_id, log],
        )?;
        let status = settle_sent(&tx, local_id, server_msg_id, seq, server_ts)?;
        exec(
            &tx,
            "DELETE FROM outbox WHERE local_id = ?1",
            params![local_id],
        )?;
        let before = state(&tx, &log_key("cursor", log))?;
        record_seq(&tx, log, seq)?;
        let released = release(&tx, log, before)?;
        tx.commit()?;
        Ok(Some((local_id, status, released)))
    }

    /// An outgoing message failed for good (or was given up): out of the outbox.
    pub fn mark_failed(&mut self, id: &ClientMsgId, reason: &str) -> Result<Option<i64>, DbError> {
        let tx = self.conn.transaction()?;
        let local = local_id_of(&tx, id)?;
        if let Some(local_id) = local {
            exec(
                &tx,
                "UPDATE messages SET status = ?2, error = ?3 WHERE local_id = ?1 AND status = ?4",
                params![
                    local_id,
                    MessageStatus::Failed {
                        reason: String::new()
                    }
                    .code(),
                    reason,
                    MessageStatus::Pending.code()
                ],
            )?;
            exec(
                &tx,
                "DELETE FROM outbox WHERE local_id = ?1",
                params![local_id],
            )?;
        }
        tx.commit()?;
        Ok(local)
    }

    /// Puts a failed message back into the outbox (same client message id).
    pub fn retry(&mut self, local_id: i64) -> Result<Option<Message>, DbError> {
        let tx = self.conn.transaction()?;
        let n = exec(
            &tx,
            "UPDATE messages SET status = ?2, error = NULL WHERE local_id = ?1 AND outgoing = 1 AND status = ?3",
            params![
                local_id,
                MessageStatus::Pending.code(),
                MessageStatus::Failed {
                    reason: String::new()
                }
                .code()
            ],
        )?;
        if n == 1 {
            // A retried message goes to the end of the send order.
            let send_seq = take_send_seq(&tx)?;
            exec(
                &tx,
                "INSERT OR IGNORE INTO outbox (local_id, send_seq) VALUES (?1, ?2)",
                params![local_id, send_seq as i64],
            )?;
        }
        tx.commit()?;
        if n == 1 {
            self.message(local_id)
        } else {
            Ok(None)
        }
    }
}

/// The server stored our message `local_id` (its `SendResult`, or its entry in our own
/// timeline, whichever comes first): records its ids, and its status becomes Sent, or
/// Delivered/Read if a receipt covering it already arrived (receipts can overtake).
/// Returns the status.
pub(super) fn settle_sent(
    tx: &Transaction<'_>,
    local_id: i64,
    server_msg_id: u64,
    seq: u64,
    server_ts: u64,
) -> rusqlite::Result<MessageStatus> {
    exec(
        tx,
        "UPDATE messages SET server_msg_id = ?2, seq = ?3, server_ts = ?4,
             status = CASE WHEN status = ?5 THEN COALESCE((
                 SELECT CASE WHEN ?2 <= c.read_up_to THEN ?8 WHEN ?2 <= c.delivered_up_to THEN ?7 ELSE ?6 END
                 FROM conversations c
                 WHERE c.conv_kind = messages.conv_kind AND c.conversation = messages.conversation), ?6)
             ELSE status END, error = NULL
         WHERE local_id = ?1",
        params![
            local_id,
            server_msg_id as i64,
            seq as i64,
            server_ts as i64,
            MessageStatus::Pending.code(),
            MessageStatus::Sent.code(),
            MessageStatus::Delivered.code(),
            MessageStatus::Read.code()
        ],
    )?;
    one(
        tx,
        "SELECT status, error FROM messages WHERE local_id = ?1",
        params![local_id],
        |r| Ok(MessageStatus::from_db(r.get(0)?, r.get(1)?)),
    )
}

/// The next number of this device's send order.
fn take_send_seq(tx: &Transaction<'_>) -> rusqlite::Result<u64> {
    let next = state(tx, "send_seq")? + 1;
    set_state(tx, "send_seq", next)?;
    Ok(next)
}

pub(super) fn local_id_of(tx: &Transaction<'_>, id: &ClientMsgId) -> rusqlite::Result<Option<i64>> {
    one(
        tx,
        "SELECT local_id FROM messages WHERE client_msg_id = ?1",
        params![&id.0[..]],
        |r| r.get(0),
    )
    .optional()
}
