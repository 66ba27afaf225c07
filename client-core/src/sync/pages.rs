//! Sync pages: the user's timeline above the cursor, several pages in flight.
//!
//! A catch-up splits the seqs between the cursor and the server's head into ranges of
//! one page each (`after_seq`, `until_seq`) and keeps up to [`PAGES_IN_FLIGHT`] of them
//! requested at once. The server reads the next pages while this device stores the last
//! one (each page is one local transaction), so a backlog costs the slower of the two
//! sides, not their sum plus a round trip per page.
//!
//! Pages may be answered in any order: the store keeps entries above a gap, and its
//! cursor moves once the range below is in. A range the server answered only in part
//! (its page has a byte budget) is asked again from its last entry. When the last page
//! in flight is answered, whatever is still missing is pulled: a gap (pushes lost, a
//! page that failed) as one exact range below the first entry held, a head that moved
//! as new ranges. A server that answers with empty pages while claiming more is asked
//! again only after a doubling wait, one page at a time.

use std::time::{Duration, Instant};

use tern_protocol::frame::Frame;
use tern_protocol::pb;

use super::{SYNC_RETRY, SyncEvent, SyncMachine};
use crate::store::{Db, DbError};

/// Sync pages requested at once. The server reads at most four requests of a session
/// at a time (and stops reading its frames meanwhile); three leaves one for the app's
/// own requests and the large groups' logs.
pub const PAGES_IN_FLIGHT: usize = 3;

/// The longest wait between pulls that bring nothing.
const MAX_PULL_BACKOFF: Duration = Duration::from_secs(30);

/// A sync page in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PageRequest {
    /// Its request id.
    pub id: u64,
    /// The last seq of its range.
    pub until: u64,
}

impl SyncMachine {
    /// Requests sync pages above the cursor, up to the server's head (or the highest seq
    /// held), until [`PAGES_IN_FLIGHT`] are in flight.
    pub(super) fn pull(&mut self, db: &mut Db) -> Result<(), DbError> {
        let Some(link) = self.link.as_ref() else {
            return Ok(());
        };
        // After empty pages, one page at a time until one brings something.
        let limit = if link.empty_pages > 0 {
            1
        } else {
            PAGES_IN_FLIGHT
        };
        if link.pages.len() >= limit {
            return Ok(());
        }
        let cursor = db.cursor()?;
        let target = self.head().max(db.max_seq()?);
        let page = u64::from(self.config.sync_page.max(1));
        let link = self.link_mut();
        // Ranges already requested are not asked again while they are in flight; with
        // none in flight, everything above the cursor is missing.
        let mut from = if link.pages.is_empty() {
            cursor
        } else {
            link.requested.max(cursor)
        };
        while self.link_mut().pages.len() < limit && from < target {
            let until = from.saturating_add(page).min(target);
            self.request_page(from, until);
            from = until;
        }
        Ok(())
    }

    fn request_page(&mut self, after_seq: u64, until_seq: u64) {
        let request_id = self.next_request_id();
        let link = self.link_mut();
        link.pages.push(PageRequest {
            id: request_id,
            until: until_seq,
        });
        link.requested = link.requested.max(until_seq);
        let limit = self.config.sync_page;
        self.send(Frame::SyncRequest(pb::SyncRequest {
            request_id,
            after_seq,
            until_seq,
            limit,
            ..Default::default()
        }));
    }

    /// Requests exactly the first missing range: above the cursor, below the first entry
    /// already held. (Asking for everything above the cursor would re-send, on every
    /// lost push, entries the device already has.) With nothing held above the cursor,
    /// pulls up to the head.
    pub(super) fn pull_gap(&mut self, db: &mut Db) -> Result<(), DbError> {
        if self.link.as_ref().is_none_or(|l| !l.pages.is_empty()) {
            return Ok(());
        }
        let cursor = db.cursor()?;
        let Some(held) = db.first_held_seq()? else {
            return self.pull(db);
        };
        self.request_page(cursor, held - 1);
        Ok(())
    }

    /// The server could not answer sync request `request_id` (if it is a page in
    /// flight): once no page is in flight, what is missing is pulled after
    /// [`SYNC_RETRY`].
    pub(super) fn on_page_error(&mut self, request_id: u64, now: Instant) {
        let link = self.link_mut();
        let Some(i) = link.pages.iter().position(|p| p.id == request_id) else {
            return;
        };
        link.pages.swap_remove(i);
        if link.pages.is_empty() {
            link.requested = 0;
            link.gap_at = Some(now + SYNC_RETRY);
        }
    }

    /// A sync page: stored and acknowledged, then the range is asked again from its last
    /// entry if the server cut it short, and pages are topped up.
    pub(super) fn on_page(
        &mut self,
        page: pb::SyncResponse,
        now: Instant,
        db: &mut Db,
    ) -> Result<(), DbError> {
        let link = self.link_mut();
        link.head = link.head.max(page.head_seq);
        let slot = link
            .pages
            .iter()
            .position(|p| p.id == page.request_id)
            .map(|i| link.pages.swap_remove(i));
        let last = page.entries.last().map(|e| e.seq);
        self.store_and_ack(&page.entries, &[], true, now, db)?;
        let cursor = db.cursor()?;
        let head = self.head();
        self.events.push_back(SyncEvent::Progress {
            stored: cursor,
            head,
        });
        let Some(slot) = slot else {
            // Not a page in flight (one forgotten after empty pages): its entries are
            // stored; the pages in flight or the pending pull go on.
            return Ok(());
        };
        if last.is_none() && (page.more || head > cursor) {
            // Nothing came though the server says there is more: never ask again at
            // once (a misbehaving server would be asked thousands of times a second).
            let link = self.link_mut();
            link.pages.clear();
            link.requested = 0;
            link.empty_pages += 1;
            let wait = SYNC_RETRY
                .saturating_mul(1 << link.empty_pages.min(6).saturating_sub(1))
                .min(MAX_PULL_BACKOFF);
            tracing::warn!(
                cursor,
                head,
                wait_ms = wait.as_millis() as u64,
                "empty sync page with more to come: waiting"
            );
            link.pull_at = Some(now + wait);
            return Ok(());
        }
        if last.is_some() {
            self.link_mut().empty_pages = 0;
        }
        if let (true, Some(last)) = (page.more, last) {
            if last < slot.until {
                self.request_page(last, slot.until);
            }
        }
        if !self.link_mut().pages.is_empty() {
            return self.pull(db);
        }
        self.link_mut().requested = 0;
        // Another gap (pushes lost while we synced, a page that failed) is pulled next,
        // after the usual wait; a backlog beyond everything held is caught up now.
        if db.max_seq()? > cursor {
            self.link_mut().gap_at = Some(now + self.config.gap_wait);
        } else if head > cursor {
            self.pull(db)?;
        }
        Ok(())
    }
}
