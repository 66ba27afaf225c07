//! The push side of a session: timeline and log entries pushed under the adaptive
//! push QoS (`qos::Sender` keyed by (log number, seq), keeping the entry it resends),
//! and the client's `DeliveryAck`s that settle them and advance the device's cursor.

use std::sync::Arc;

use tern_protocol::frame::{FLAG_RETRANSMIT, Frame};
use tern_protocol::pb;
use tern_protocol::qos::SenderEvent;
use tokio::time::Instant;

use super::{End, Session, hot};
use crate::registry::Push;
use crate::store::{StoreError, store_failure};

/// What a session's push QoS tracks: (log number, seq). Log 0 is the user's own
/// timeline; large groups' logs get numbers 1, 2, ... per session ([`Session::logs`]).
pub(super) type PushKey = (u32, u64);

impl Session {
    /// The number of a log (0 = the user's timeline), assigned on first use.
    pub(super) fn log_number(&mut self, log: Option<&str>) -> u32 {
        let Some(log) = log else { return 0 };
        match self.logs.iter().position(|l| &**l == log) {
            Some(i) => i as u32 + 1,
            None => {
                self.logs.push(Arc::from(log));
                self.logs.len() as u32
            }
        }
    }

    pub(super) fn push_frame(&self, key: PushKey, entry: &pb::TimelineEntry) -> Frame {
        let log = match key.0 {
            0 => String::new(),
            n => self.logs[n as usize - 1].to_string(),
        };
        Frame::Push(pb::Push {
            entry: Some(entry.clone()),
            log,
        })
    }

    pub(super) async fn push(&mut self, p: Push) -> Result<(), End> {
        if let (None, Some(pb::timeline_entry::Body::Group(ev))) = (&p.log, &p.entry.body) {
            if ev.large && self.shared.cluster.is_some() {
                // Joined (or changed) a large group while online: receive its log.
                super::watch_groups(&self.shared, &self.group_watches, vec![ev.group.clone()]);
            }
        }
        let key: PushKey = (self.log_number(p.log.as_deref()), p.entry.seq);
        if self.push_qos.is_pending(&key) {
            return Ok(());
        }
        if !self.push_qos.has_room() {
            // Window full: the client sees the gap at the next push and pulls it. The
            // newest skipped entry of each log is kept and pushed once there is room,
            // so the last messages of a burst are not left with nothing after them to
            // reveal the gap.
            metrics::counter!("tern_pushes_skipped_total").increment(1);
            self.keep_tail(key, p.entry);
            return Ok(());
        }
        self.send_push(key, p.entry).await
    }

    async fn send_push(&mut self, key: PushKey, entry: Arc<pb::TimelineEntry>) -> Result<(), End> {
        let frame = self.push_frame(key, &entry);
        if self
            .push_qos
            .try_send_with(key, entry, Instant::now().into_std())
            .is_err()
        {
            return Ok(()); // pending already
        }
        hot::hot().pushes.increment(1);
        self.write(&frame, 0).await
    }

    /// Keeps `entry` as its log's tail unless the tail already holds a newer entry of
    /// that log (whose push reveals the gap up to it anyway).
    fn keep_tail(&mut self, key: PushKey, entry: Arc<pb::TimelineEntry>) {
        if self.tail.iter().any(|(k, _)| k.0 == key.0 && k.1 >= key.1) {
            return;
        }
        self.tail.retain(|(k, _)| k.0 != key.0);
        self.tail.push((key, entry));
    }

    /// Pushes the kept tails (newest skipped entry per log) while the window has room.
    pub(super) async fn push_tails(&mut self) -> Result<(), End> {
        while self.push_qos.has_room() {
            let Some((key, entry)) = self.tail.pop() else {
                break;
            };
            self.send_push(key, entry).await?;
        }
        Ok(())
    }

    pub(super) async fn on_qos_timer(&mut self) -> Result<(), End> {
        let waited = self.push_qos.stats().waited;
        self.push_qos.handle_timeout(Instant::now().into_std());
        // Timers that found the device still storing older pushes (or this round's
        // copies spent): not resent (see `tern_protocol::qos`).
        let waited = self.push_qos.stats().waited - waited;
        if waited > 0 {
            metrics::counter!("tern_push_timeouts_waited_total").increment(waited);
        }
        while let Some(ev) = self.push_qos.poll_event() {
            match ev {
                SenderEvent::Retransmit(key) => {
                    if let Some(entry) = self.push_qos.payload(&key).cloned() {
                        metrics::counter!("tern_push_retransmissions_total").increment(1);
                        let frame = self.push_frame(key, &entry);
                        self.write(&frame, FLAG_RETRANSMIT).await?;
                    }
                }
                SenderEvent::Failed {
                    key, transmissions, ..
                } => {
                    metrics::counter!("tern_push_failed_total").increment(1);
                    tracing::warn!(user = %self.user, log = key.0, seq = key.1, transmissions, "push never acknowledged; kept as the log's tail");
                    // The session is alive (its heartbeats arrive): keep the entry as its
                    // log's tail so the device learns of it. A newer entry of the log
                    // replaces it, and the device pulls everything up to that one.
                    if let Some(entry) = self.push_qos.take_failed(&key) {
                        self.keep_tail(key, entry);
                    }
                }
            }
        }
        self.push_tails().await
    }

    pub(super) fn on_delivery_ack(&mut self, a: pb::DeliveryAck) {
        let now = Instant::now().into_std();
        let log = (!a.log.is_empty()).then_some(a.log.as_str());
        // Only logs this session pushed have pending entries: an ACK naming any other
        // log settles nothing (and must not grow the session's log table).
        let number = match log {
            None => 0,
            Some(l) => match self.logs.iter().position(|x| &**x == l) {
                Some(i) => i as u32 + 1,
                None => return,
            },
        };
        // Work bounded by the window and by the frame's own length, never their product:
        // one pass over the pending pushes (at most the window) for those at or under the
        // cumulative seq and the range the others span, then each listed seq in that
        // range looked up once. Testing every pending push against the whole list cost
        // window × list: 256 × 60,000 comparisons for one 180 KB frame.
        let (mut acked, mut lo, mut hi) = (Vec::<PushKey>::new(), u64::MAX, 0);
        for &(l, s) in self.push_qos.pending() {
            if l != number {
                continue;
            }
            if s <= a.cumulative_seq {
                acked.push((l, s));
            } else {
                (lo, hi) = (lo.min(s), hi.max(s));
            }
        }
        acked.extend(
            a.seqs
                .iter()
                .filter(|&&s| (lo..=hi).contains(&s))
                .map(|&s| (number, s))
                .filter(|key| self.push_qos.is_pending(key)),
        );
        for key in acked {
            if let Some(ack) = self.push_qos.on_ack(key, now) {
                hot::hot()
                    .push_ack_seconds
                    .record(ack.elapsed.as_secs_f64());
            }
        }
        // A group log's ACK only settles the pushes: no cursor or receipts on the server.
        // An ACK that does not move this device's cursor costs no write.
        let written = self.acked_cursor.load(std::sync::atomic::Ordering::Relaxed);
        if a.cumulative_seq <= written || log.is_some() {
            return;
        }
        let acked_cursor = self.acked_cursor.clone();
        let shared = self.shared.clone();
        let (user, device, seq) = (self.user.clone(), self.device.clone(), a.cumulative_seq);
        // Spawned, not tied to the session: the cursor and receipts must advance even if
        // the connection drops right after the ACK. One write per ACK that moves the
        // cursor: folding the ACKs that arrive while a write is in flight into one next
        // write (tried at `4453086`) cut the writer's jobs from 3.0 to 1.9 per message but
        // likely released the follow-up writes of a batch together: the p99 at 50 % load
        // was higher in four runs of four (19.5-26.0 ms against 9.7-20.6) at the same
        // capacity (docs/bench/analysis.md).
        tokio::spawn(async move {
            match shared.store.ack_delivered(&user, &device, seq).await {
                Ok(fanout) => {
                    acked_cursor.fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
                    shared.fan_out(fanout, None)
                }
                // Busy (counted like every refused write): the next ACK's cumulative
                // seq covers this one.
                Err(e @ StoreError::Busy) => {
                    store_failure(e);
                }
                Err(e) => tracing::error!(%user, error = %e, "delivery ack not recorded"),
            }
        });
    }
}
