//! What a device does when the server's store went back in time (restored from a
//! backup): the server's timelines end lower than what the device holds, and the seqs
//! above the restore point will be given to other entries.
//!
//! The device *rewinds* the timeline to the restore point: entries above it lose their
//! seq (the messages stay on the device, shown where they were), the cursor and the
//! held seqs go back, so what the server stores next from there is synced; and the
//! user's own messages above it, which the restored server no longer has, go back in
//! the outbox in their original order and are sent again with the same client message
//! ids (a receiver that already holds one keeps its copy: messages are unique by
//! client message id). Server message ids need no care: a restored server continues
//! them above any it handed out before.

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
        tx.execute(
            "UPDATE messages SET seq = NULL WHERE log IS ?1 AND seq > ?2",
            params![log, to as i64],
        )?;
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
