//! What a device does when the server's store went back in time (restored from a
//! backup): the server's timelines end lower than what the device holds, and the seqs
//! above the restore point will be given to other entries.
//!
//! The device *rewinds* the timeline to the restore point: entries above it lose their
//! seq (the messages stay on the device, shown where they were; one the restored server
//! stores again takes its new seq when it comes), the cursor and the
//! held seqs go back, so what the server stores next from there is synced; and the
//! user's own messages above it, which the restored server no longer has, go back in
//! the outbox in their original order and are sent again with the same client message
//! ids (a receiver that already holds one keeps its copy: messages are unique by
//! client message id). Server message ids need no care: a restored server continues
//! them above any it handed out before.
//!
//! The timeline's conversations go back with it: their latest seq, and the base their
//! unread count is derived from (`store/mod.rs`), are taken down to the restore point,
//! with the incoming messages the device holds between the two taken out of the base's
//! count (unread messages are the newest, after the read mark). Left above it, a
//! conversation's next `mark_read` would have covered seqs the restored server gives
//! to new messages, and messages stored at those seqs would not have counted as
//! unread. A conversation read up to the restore point has its read mark queued again
//! there: the restored store may have lost it.

use rusqlite::params;

use super::timeline::{Log, log_key};
use super::*;

/// What a rewind did.
#[derive(Debug, Default, PartialEq)]
pub struct Rewound {
    /// The position the timeline went back to.
    pub to: u64,
    /// Own messages put back in the outbox (local ids, in send order).
    pub requeued: Vec<i64>,
}

/// Where a timeline must go back to, if anywhere: to the restore point when the
/// generation changed since the device last saw it (`known`, 0 = never), or to the
/// server's head when it is below the device's cursor (a restore by hand).
fn rewind_point(
    known: u64,
    generation: u64,
    restored_seq: u64,
    head: u64,
    cursor: u64,
) -> Option<u64> {
    if known != 0 && known != generation {
        Some(restored_seq.min(head))
    } else if head < cursor {
        Some(head)
    } else {
        None
    }
}

impl Db {
    /// The store generation the server announced at login, and the user's head at its
    /// last restore. Returns the rewind done if the generation changed (or the server's
    /// head is below the cursor: a restore by hand), `None` if nothing was to do.
    pub fn server_generation(
        &mut self,
        generation: u64,
        restored_seq: u64,
        head: u64,
    ) -> Result<Option<Rewound>, DbError> {
        if generation == 0 {
            return Ok(None); // a server from before store generations
        }
        let known = state(&self.conn, "generation")?;
        let to = rewind_point(known, generation, restored_seq, head, self.cursor()?);
        let rewound = match to {
            Some(to) if to < self.max_seq()? => Some(self.rewind(None, to)?),
            _ => None,
        };
        set_state(&self.conn, "generation", generation)?;
        Ok(rewound)
    }

    /// A large group's log as the server summarised it after login: rewound like the
    /// inbox if the store generation changed since this device last saw the log, or if
    /// the log's head is below the device's cursor.
    pub fn server_log_generation(
        &mut self,
        group: &str,
        generation: u64,
        restored_seq: u64,
        head: u64,
    ) -> Result<Option<Rewound>, DbError> {
        if generation == 0 {
            return Ok(None);
        }
        let key = format!("generation:{group}");
        let known = state(&self.conn, &key)?;
        let to = rewind_point(
            known,
            generation,
            restored_seq,
            head,
            self.log_cursor(group)?,
        );
        let rewound = match to {
            Some(to) if to < self.log_max_seq(group)? => Some(self.rewind(Some(group), to)?),
            _ => None,
        };
        set_state(&self.conn, &key, generation)?;
        Ok(rewound)
    }

    /// Rewinds a timeline to `to` (see the module docs).
    fn rewind(&mut self, log: Log<'_>, to: u64) -> Result<Rewound, DbError> {
        let tx = self.conn.transaction()?;
        let mine: Vec<i64> = tx
            .prepare(
                "SELECT local_id FROM messages WHERE outgoing = 1 AND log IS ?1 AND seq > ?2
                 AND status IN (?3, ?4, ?5) ORDER BY seq",
            )?
            .query_map(
                params![
                    log,
                    to as i64,
                    MessageStatus::Sent.code(),
                    MessageStatus::Delivered.code(),
                    MessageStatus::Read.code()
                ],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?;
        for id in &mine {
            tx.execute(
                "UPDATE messages SET server_msg_id = NULL, server_ts = NULL, seq = NULL, status = ?2, error = NULL
                 WHERE local_id = ?1",
                params![id, MessageStatus::Pending.code()],
            )?;
        }
        // Back in the outbox before what was waiting there (they were sent first): the
        // outbox is numbered again in that order from 1, and the login renumbers it
        // from the server's next send seq.
        let waiting: Vec<i64> = tx
            .prepare("SELECT local_id FROM outbox ORDER BY send_seq, local_id")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        tx.execute("DELETE FROM outbox", [])?;
        for (i, id) in mine.iter().chain(waiting.iter()).enumerate() {
            tx.execute(
                "INSERT INTO outbox (local_id, send_seq) VALUES (?1, ?2)",
                params![id, i as i64 + 1],
            )?;
        }
        set_state(&tx, "send_seq", (mine.len() + waiting.len()) as u64)?;
        let moved = rewind_conversations(&tx, log, to)?;
        tx.execute(
            "UPDATE messages SET seq = NULL WHERE log IS ?1 AND seq > ?2",
            params![log, to as i64],
        )?;
        queue_reads_at(&tx, &moved, log, to)?;
        match log {
            None => tx.execute("DELETE FROM received_seqs WHERE seq > ?1", [to as i64])?,
            Some(g) => tx.execute(
                "DELETE FROM log_received WHERE log = ?1 AND seq > ?2",
                params![g, to as i64],
            )?,
        };
        if log.is_none() {
            // History ranges held above the restore point no longer match the server.
            tx.execute("DELETE FROM held_ranges WHERE lo > ?1", [to as i64])?;
            tx.execute("UPDATE held_ranges SET hi = ?1 WHERE hi > ?1", [to as i64])?;
        }
        for name in ["cursor", "sync_base"] {
            let key = log_key(name, log);
            if state(&tx, &key)? > to {
                set_state(&tx, &key, to)?;
            }
        }
        tx.commit()?;
        tracing::warn!(
            log = log.unwrap_or(""),
            to,
            requeued = mine.len(),
            "the server's store was restored: timeline rewound, own messages above it queued again"
        );
        Ok(Rewound { to, requeued: mine })
    }
}

/// The conversations of timeline `log` (the user's: every conversation but the large
/// groups'; a log: its group's) back to `to`, before the messages above it lose their
/// seqs (see the module docs). Returns the conversations moved.
fn rewind_conversations(
    tx: &rusqlite::Transaction<'_>,
    log: Log<'_>,
    to: u64,
) -> Result<Vec<(i32, String)>, DbError> {
    const IN_TIMELINE: &str = "CASE WHEN ?1 IS NULL
             THEN NOT (c.conv_kind = ?3 AND c.conversation IN (SELECT grp FROM logs))
             ELSE c.conv_kind = ?3 AND c.conversation = ?1 END";
    const ABOVE: &str = "(c.base_seq > ?2 OR c.latest_seq > ?2 OR c.base_mark > ?2)";
    let group = ConversationKind::Group.to_wire();
    let moved: Vec<(i32, String)> = tx
        .prepare(&format!(
            "SELECT c.conv_kind, c.conversation FROM conversations c WHERE {ABOVE} AND {IN_TIMELINE}"
        ))?
        .query_map(params![log, to as i64, group], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    tx.execute(
        &format!(
            "UPDATE conversations AS c SET
                 base_unread = MAX(0, c.base_unread - (SELECT COUNT(*) FROM messages m
                     WHERE m.log IS ?1 AND m.conv_kind = c.conv_kind
                       AND m.conversation = c.conversation AND m.outgoing = 0
                       AND m.seq > ?2 AND m.seq <= c.base_seq)),
                 base_seq = MIN(c.base_seq, ?2),
                 base_mark = MIN(c.base_mark, ?2),
                 latest_seq = MIN(c.latest_seq, ?2)
             WHERE {ABOVE} AND {IN_TIMELINE}"
        ),
        params![log, to as i64, group],
    )?;
    // Read marks waiting for the server above the restore point: at it.
    tx.execute(
        &format!(
            "UPDATE pending_reads AS c SET up_to_seq = ?2 WHERE c.up_to_seq > ?2 AND {IN_TIMELINE}"
        ),
        params![log, to as i64, group],
    )?;
    Ok(moved)
}

/// Of the conversations `moved` back to `to` (after the messages above it lost their
/// seqs), the ones read up to it, with a message there: their read mark goes again.
fn queue_reads_at(
    tx: &rusqlite::Transaction<'_>,
    moved: &[(i32, String)],
    log: Log<'_>,
    to: u64,
) -> Result<(), DbError> {
    let mut unread = tx.prepare(&format!(
        "SELECT {UNREAD} FROM conversations c WHERE c.conv_kind = ?1 AND c.conversation = ?2"
    ))?;
    for (kind, conversation) in moved {
        if unread.query_row(params![kind, conversation], |r| r.get::<_, i64>(0))? != 0 {
            continue;
        }
        tx.execute(
            "INSERT INTO pending_reads (conv_kind, conversation, up_to_seq)
             SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM messages m WHERE m.log IS ?4
                 AND m.conv_kind = ?1 AND m.conversation = ?2 AND m.outgoing = 0 AND m.seq <= ?3)
             ON CONFLICT (conv_kind, conversation) DO UPDATE SET up_to_seq = excluded.up_to_seq",
            params![kind, conversation, to as i64, log],
        )?;
    }
    Ok(())
}
