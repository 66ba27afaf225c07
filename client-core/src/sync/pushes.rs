//! Live pushes of the user's timeline in the sync machine. Pushes that arrived together
//! (the driver read them one after another without waiting) are stored in one
//! transaction and acknowledged in one `DeliveryAck`: under a burst that is one local
//! commit, one ACK datagram and one cursor write at the server for the lot, and one
//! *delivered* receipt to each sender instead of one per message. A push that arrives
//! alone is stored and acknowledged at once, as before: batching adds no wait.

use std::time::Instant;

use tern_protocol::frame::Frame;
use tern_protocol::pb;

use super::SyncMachine;
use crate::store::{Db, DbError};

/// At most this many pushes are stored and acknowledged together: the ACK's seq list
/// stays small (a few hundred bytes) and one transaction stays short.
pub const MAX_PUSHES_TOGETHER: usize = 64;

impl SyncMachine {
    /// Feeds frames that arrived together, in their order. Consecutive pushes of the
    /// user's timeline (up to [`MAX_PUSHES_TOGETHER`]) are stored and acknowledged
    /// together; every other frame goes through [`SyncMachine::handle_frame`]. Returns
    /// the frames handed back (see `handle_frame`), in their order.
    pub fn handle_frames(
        &mut self,
        frames: Vec<Frame>,
        now: Instant,
        db: &mut Db,
    ) -> Result<Vec<Frame>, DbError> {
        let mut back = Vec::new();
        let mut pushes: Vec<pb::TimelineEntry> = Vec::new();
        for frame in frames {
            match frame {
                Frame::Push(p) if p.log.is_empty() && p.entry.is_some() && self.link.is_some() => {
                    pushes.extend(p.entry);
                    if pushes.len() >= MAX_PUSHES_TOGETHER {
                        self.on_pushes(std::mem::take(&mut pushes), now, db)?;
                    }
                }
                other => {
                    if !pushes.is_empty() {
                        self.on_pushes(std::mem::take(&mut pushes), now, db)?;
                    }
                    back.extend(self.handle_frame(other, now, db)?);
                }
            }
        }
        if !pushes.is_empty() {
            self.on_pushes(pushes, now, db)?;
        }
        Ok(back)
    }

    /// Stores the pushed entries not seen before in one transaction and acknowledges
    /// them, with those seen before (their ACK was lost: acknowledged again, stored
    /// nothing), in one `DeliveryAck`.
    pub(super) fn on_pushes(
        &mut self,
        entries: Vec<pb::TimelineEntry>,
        now: Instant,
        db: &mut Db,
    ) -> Result<(), DbError> {
        self.now = self.now.max(now);
        let link = self.link_mut();
        link.waiting_since = None;
        if let Some(top) = entries.iter().map(|e| e.seq).max() {
            link.head = link.head.max(top);
        }
        let mut fresh = Vec::with_capacity(entries.len());
        let mut again = Vec::new();
        for entry in entries {
            if self.filter.insert(entry.seq, now) {
                fresh.push(entry);
            } else {
                again.push(entry.seq);
            }
        }
        if fresh.is_empty() {
            let cursor = db.cursor()?;
            self.ack_above(cursor, again, false);
            return Ok(());
        }
        self.store_and_ack(&fresh, &again, false, now, db)
    }
}
