//! Large groups' logs (read diffusion) in the sync machine: one cursor per log, started
//! at the user's join position (or the head on a fresh install without full history),
//! pushes stored only once the device follows the log, pages pulled above the cursor.

use tern_protocol::frame::Frame;
use tern_protocol::{pb, unix_ms};

use super::SyncMachine;
use crate::store::{Db, DbError};

impl SyncMachine {
    /// Stores a pushed entry of a large group's log, acknowledges it, and pulls the log
    /// if it reveals a gap.
    pub(super) fn on_log_push(
        &mut self,
        group: String,
        entry: pb::TimelineEntry,
        db: &mut Db,
    ) -> Result<(), DbError> {
        let seq = entry.seq;
        if !db.follows_log(&group)? {
            // Not (yet) a member as far as this device knows: the group event in the
            // user's timeline (with the position to start from) comes next. Settle the
            // push, store nothing.
            self.send(Frame::DeliveryAck(pb::DeliveryAck {
                cumulative_seq: 0,
                seqs: vec![seq],
                log: group,
            }));
            return Ok(());
        }
        let applied = db.apply_log_entries(&group, &[entry])?;
        self.publish(applied);
        let cursor = db.log_cursor(&group)?;
        let max = db.log_max_seq(&group)?;
        self.send(Frame::DeliveryAck(pb::DeliveryAck {
            cumulative_seq: cursor,
            seqs: if seq > cursor { vec![seq] } else { vec![] },
            log: group.clone(),
        }));
        if max > cursor {
            self.pull_log(&group, db)?;
        }
        Ok(())
    }

    /// Requests the next page of a large group's log above its cursor.
    pub(super) fn pull_log(&mut self, group: &str, db: &mut Db) -> Result<(), DbError> {
        if self.link_mut().log_syncing.contains_key(group) {
            return Ok(());
        }
        let cursor = db.log_cursor(group)?;
        let request_id = self.next_request_id();
        self.link_mut()
            .log_syncing
            .insert(group.to_owned(), request_id);
        let limit = self.config.sync_page;
        self.send(Frame::SyncRequest(pb::SyncRequest {
            request_id,
            after_seq: cursor,
            until_seq: 0,
            limit,
            log: group.to_owned(),
        }));
        Ok(())
    }

    pub(super) fn on_log_page(
        &mut self,
        page: pb::SyncResponse,
        db: &mut Db,
    ) -> Result<(), DbError> {
        let group = page.log.clone();
        self.link_mut().log_syncing.remove(&group);
        let before = db.log_cursor(&group)?;
        let applied = db.apply_log_entries(&group, &page.entries)?;
        self.publish(applied);
        let cursor = db.log_cursor(&group)?;
        let ack = Frame::DeliveryAck(pb::DeliveryAck {
            cumulative_seq: cursor,
            seqs: vec![],
            log: group.clone(),
        });
        self.push_transmit(ack, 0, true);
        if cursor > before && (page.more || page.head_seq > cursor) {
            self.pull_log(&group, db)?;
        }
        Ok(())
    }

    /// The large groups' summaries: applied, then each log is caught up (or, on a fresh
    /// install without full history, started at its head).
    pub(super) fn on_logs(&mut self, logs: pb::Logs, db: &mut Db) -> Result<(), DbError> {
        // A log the restored store holds less of goes back first, so that the summary
        // (taken after the restore) is applied to the rewound log, not rewound with it.
        let mut rewound_any = false;
        for s in &logs.groups {
            let rewound =
                db.server_log_generation(&s.log, self.generation, s.restored_seq, s.latest_seq)?;
            if let Some(r) = rewound {
                self.requeued(r);
                rewound_any = true;
            }
        }
        if rewound_any {
            // Read marks the rewind queued again.
            self.send_reads(db)?;
        }
        let applied = db.apply_log_summaries(&logs.groups, unix_ms())?;
        self.publish(applied);
        for s in &logs.groups {
            let cursor = db.log_cursor(&s.log)?;
            if cursor == 0 {
                // First sight of this log on this device: from where the user joined
                // (what write diffusion would have given them), or, without full
                // history, from the head (older messages come as history pages).
                let start = if self.config.full_history_sync {
                    s.joined_at
                } else {
                    s.latest_seq
                };
                let applied = db.start_log_at(&s.log, start)?;
                self.publish(applied);
                if s.latest_seq > start {
                    self.pull_log(&s.log, db)?;
                }
            } else if s.latest_seq > cursor {
                self.pull_log(&s.log, db)?;
            }
        }
        Ok(())
    }
}
