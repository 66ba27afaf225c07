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
        tx.execute(
            "INSERT INTO messages (client_msg_id, conversation, conv_kind, sender, recipient, content_type, body, client_ts, outgoing, status)
             VALUES (?1, ?2, ?3, ?4, ?2, ?5, ?6, ?7, 1, ?8)",
            params![&id.0[..], to, kind.to_wire(), self.user, content_type, body, now_ms as i64, MessageStatus::Pending.code()],
        )?;
        let local_id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO outbox (local_id) VALUES (?1)",
            params![local_id],
        )?;
        touch_conversation(&tx, kind, to, local_id, now_ms, 0)?;
        tx.commit()?;
        Ok(self.message(local_id)?.expect("just inserted"))
    }

    /// The first `limit` outbox messages, in send order.
    pub fn outbox(&self, limit: u32) -> Result<Vec<Message>, DbError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE local_id IN (SELECT local_id FROM outbox) ORDER BY local_id LIMIT ?1"
        ))?;
        Ok(stmt
            .query_map(params![limit as i64], row_to_message)?
            .collect::<Result<_, _>>()?)
    }

    /// One message by client message id.
    pub fn message_by_client_id(&self, id: &ClientMsgId) -> Result<Option<Message>, DbError> {
        Ok(self
            .conn
            .query_row(
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
            Some(tx.query_row(
                "SELECT conversation FROM messages WHERE local_id = ?1",
                params![local_id],
                |r| r.get(0),
            )?)
        } else {
            None
        };
        let log = group.as_deref();
        let seq = if log.is_some() { log_seq } else { seq };
        tx.execute(
            "UPDATE messages SET log = ?2 WHERE local_id = ?1",
            params![local_id, log],
        )?;
        // Sent, unless a receipt covering this id already arrived (it can overtake).
        tx.execute(
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
        let status = tx.query_row(
            "SELECT status, error FROM messages WHERE local_id = ?1",
            params![local_id],
            |r| Ok(MessageStatus::from_db(r.get(0)?, r.get(1)?)),
        )?;
        tx.execute("DELETE FROM outbox WHERE local_id = ?1", params![local_id])?;
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
            tx.execute(
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
            tx.execute("DELETE FROM outbox WHERE local_id = ?1", params![local_id])?;
        }
        tx.commit()?;
        Ok(local)
    }

    /// Puts a failed message back into the outbox (same client message id).
    pub fn retry(&mut self, local_id: i64) -> Result<Option<Message>, DbError> {
        let tx = self.conn.transaction()?;
        let n = tx.execute(
            "UPDATE messages SET status = ?2, error = NULL WHERE local_id = ?1 AND outgoing = 1 AND status = ?3",
            params![local_id, MessageStatus::Pending.code(), MessageStatus::Failed { reason: String::new() }.code()],
        )?;
        if n == 1 {
            tx.execute(
                "INSERT OR IGNORE INTO outbox (local_id) VALUES (?1)",
                params![local_id],
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

pub(super) fn local_id_of(tx: &Transaction<'_>, id: &ClientMsgId) -> rusqlite::Result<Option<i64>> {
    tx.query_row(
        "SELECT local_id FROM messages WHERE client_msg_id = ?1",
        params![&id.0[..]],
        |r| r.get(0),
    )
    .optional()
}
