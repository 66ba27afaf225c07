//! A device's delivery cursor on its way to the store, with the ACKs coalesced.
//!
//! Every `DeliveryAck` that moves the cursor is a store write (the cursor, plus the
//! delivered receipts to the senders). Under load a client ACKs faster than the writer
//! commits, and writing each ACK on its own made the cursor a third of the writer's
//! jobs. So a session keeps at most one cursor write in flight: an ACK that arrives while
//! one is in flight only raises the wanted cursor, and when the write ends, one more
//! write takes every ACK that came meanwhile — with one receipt per sender for all of
//! them. An idle server writes each ACK at once, as before; a busy one writes fewer.
//!
//! Nothing is lost by waiting: the wanted cursor is written by the next write, and a
//! cursor write that fails (the store busy) leaves it to the next ACK, whose cumulative
//! seq covers this one. Receipts stay exact: the store sends one per sender for the
//! range the write moves the cursor over, however many ACKs that range took.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Shared between a session and its write task (which outlives the session: the cursor
/// and receipts must advance even if the connection drops right after the ACK).
#[derive(Default)]
pub(crate) struct AckCursor {
    /// The highest cursor the store has for this device (as far as this session knows).
    written: AtomicU64,
    /// The highest cursor the client acknowledged.
    wanted: AtomicU64,
    /// A write task is running.
    busy: AtomicBool,
}

impl AckCursor {
    /// Whether an ACK up to `seq` would move the cursor.
    pub(crate) fn moves(&self, seq: u64) -> bool {
        seq > self.written.load(Ordering::SeqCst)
    }

    /// The client acknowledged everything up to `seq`: written by `write` now, or by the
    /// write after the one in flight. `write(cursor)` stores the cursor (and sends the
    /// receipts) and says whether it did; a failed write is not retried until the next
    /// ACK (a store that is busy now would be asked again at once).
    pub(crate) fn ack<W, F>(self: &Arc<Self>, seq: u64, write: W)
    where
        W: Fn(u64) -> F + Send + 'static,
        F: Future<Output = bool> + Send,
    {
        self.wanted.fetch_max(seq, Ordering::SeqCst);
        if !self.moves(seq) || self.busy.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.write_loop(write).await });
    }

    /// Writes the wanted cursor until the store has it; owns `busy` while it runs.
    async fn write_loop<W, F>(&self, write: W)
    where
        W: Fn(u64) -> F,
        F: Future<Output = bool>,
    {
        loop {
            let target = self.wanted.load(Ordering::SeqCst);
            if self.moves(target) {
                if !write(target).await {
                    self.busy.store(false, Ordering::SeqCst);
                    return;
                }
                self.written.fetch_max(target, Ordering::SeqCst);
                continue;
            }
            self.busy.store(false, Ordering::SeqCst);
            // An ACK that came after the last look but saw `busy` set left its cursor to
            // this task: take it back unless another task has started.
            let more = self.moves(self.wanted.load(Ordering::SeqCst));
            if !more || self.busy.swap(true, Ordering::SeqCst) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::*;

    type Write = std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;
    type Log = Arc<Mutex<Vec<u64>>>;

    /// A store whose writes wait for a permit, recording each cursor written.
    fn gated(
        ok: bool,
    ) -> (
        Arc<Semaphore>,
        Log,
        impl Fn(u64) -> Write + Clone + Send + 'static,
    ) {
        let gate = Arc::new(Semaphore::new(0));
        let log: Log = Arc::new(Mutex::new(vec![]));
        let (g, l) = (gate.clone(), log.clone());
        let write = move |seq: u64| -> Write {
            let (g, l) = (g.clone(), l.clone());
            Box::pin(async move {
                g.acquire().await.expect("gate").forget();
                l.lock().expect("lock").push(seq);
                ok
            })
        };
        (gate, log, write)
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn acks_during_a_write_become_one_write_of_the_highest() {
        let cursor = Arc::new(AckCursor::default());
        let (gate, log, write) = gated(true);
        cursor.ack(1, write.clone());
        settle().await;
        for seq in [2, 4, 3, 7, 5] {
            cursor.ack(seq, write.clone());
        }
        gate.add_permits(10);
        settle().await;
        assert_eq!(
            *log.lock().unwrap(),
            vec![1, 7],
            "one write for the five ACKs"
        );
        assert!(!cursor.moves(7));
        // Idle again: the next ACK is written at once, an old one not at all.
        cursor.ack(6, write.clone());
        cursor.ack(9, write.clone());
        settle().await;
        assert_eq!(*log.lock().unwrap(), vec![1, 7, 9]);
    }

    #[tokio::test]
    async fn a_failed_write_is_left_to_the_next_ack() {
        let cursor = Arc::new(AckCursor::default());
        let (gate, log, failing) = gated(false);
        gate.add_permits(10);
        cursor.ack(3, failing.clone());
        settle().await;
        assert_eq!(*log.lock().unwrap(), vec![3], "tried once, not in a loop");
        assert!(cursor.moves(3), "not written");
        let (gate, log, write) = gated(true);
        gate.add_permits(10);
        cursor.ack(4, write);
        settle().await;
        assert_eq!(
            *log.lock().unwrap(),
            vec![4],
            "the next ACK writes the cursor"
        );
    }
}
