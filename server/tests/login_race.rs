//! A message stored while a recipient's login is between reading its head and going live
//! reaches that device at once.
//!
//! The server once read the head before it registered the session for pushes: a message
//! stored in between was neither under the head the device was told nor pushed to it,
//! and the device learned of it only at its next heartbeat (30 s at first). The store
//! here holds the login's `head_seq` answer until the message is stored, so the test
//! lands in that window every time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tern_client::{ConversationKind, MessageStatus};
use tern_protocol::pb;
use tern_server::store::{
    Fanout, GroupLimits, GroupOp, GroupOutcome, NewMessage, PushTarget, Store, StoreError,
    StoreFuture, StoredMessage, SummaryPage, TimelinePage, WebhookJob,
};
use tern_testkit::client::client;
use tern_testkit::until_within;
use tokio::sync::Notify;

/// A store that, once armed, holds the next `head_seq` answer for `user` until told.
struct HoldHead {
    inner: Arc<dyn Store>,
    user: &'static str,
    armed: AtomicBool,
    /// Signalled when the held head has been read.
    read: Notify,
    /// Signalled to let the held answer go.
    release: Notify,
}

#[async_trait]
impl Store for HoldHead {
    fn store_message(&self, msg: NewMessage) -> StoreFuture<StoredMessage> {
        self.inner.store_message(msg)
    }
    async fn timeline(
        &self,
        user: &str,
        after: u64,
        until: u64,
        limit: u32,
    ) -> Result<TimelinePage, StoreError> {
        self.inner.timeline(user, after, until, limit).await
    }
    async fn summaries(
        &self,
        user: &str,
        last_messages: u32,
        limit: u32,
    ) -> Result<SummaryPage, StoreError> {
        self.inner.summaries(user, last_messages, limit).await
    }
    async fn ack_delivered(
        &self,
        user: &str,
        device: &str,
        seq: u64,
    ) -> Result<Vec<Fanout>, StoreError> {
        self.inner.ack_delivered(user, device, seq).await
    }
    async fn next_send_seq(&self, user: &str, device: &str) -> Result<u64, StoreError> {
        self.inner.next_send_seq(user, device).await
    }
    fn skip_send(&self, user: &str, device: &str, send_seq: u64) -> StoreFuture<()> {
        self.inner.skip_send(user, device, send_seq)
    }
    async fn head_seq(&self, user: &str) -> Result<u64, StoreError> {
        let head = self.inner.head_seq(user).await;
        if user == self.user && self.armed.swap(false, Ordering::SeqCst) {
            self.read.notify_one();
            self.release.notified().await;
        }
        head
    }
    fn generation(&self) -> u64 {
        self.inner.generation()
    }
    async fn restore_point(&self, owner: &str) -> Result<u64, StoreError> {
        self.inner.restore_point(owner).await
    }
    async fn record_login(&self, user: &str, device: &str) -> Result<(), StoreError> {
        self.inner.record_login(user, device).await
    }
    async fn user_exists(&self, user: &str) -> Result<bool, StoreError> {
        self.inner.user_exists(user).await
    }
    async fn group_op(&self, op: GroupOp, limits: GroupLimits) -> Result<GroupOutcome, StoreError> {
        self.inner.group_op(op, limits).await
    }
    async fn log_member(&self, user: &str, group: &str) -> Result<bool, StoreError> {
        self.inner.log_member(user, group).await
    }
    async fn logs(
        &self,
        user: &str,
        last_messages: u32,
    ) -> Result<(Vec<pb::ConversationSummary>, bool), StoreError> {
        self.inner.logs(user, last_messages).await
    }
    async fn group_info(&self, group: &str) -> Result<Option<pb::GroupInfo>, StoreError> {
        self.inner.group_info(group).await
    }
    async fn groups_of(&self, user: &str) -> Result<Vec<pb::GroupInfo>, StoreError> {
        self.inner.groups_of(user).await
    }
    async fn mark_read(
        &self,
        user: &str,
        kind: pb::ConversationKind,
        conversation: &str,
        up_to_seq: u64,
        group_receipts_max: usize,
    ) -> Result<Vec<Fanout>, StoreError> {
        self.inner
            .mark_read(user, kind, conversation, up_to_seq, group_receipts_max)
            .await
    }
    async fn recall(
        &self,
        user: &str,
        server_msg_id: u64,
        window_ms: u64,
    ) -> Result<Vec<Fanout>, StoreError> {
        self.inner.recall(user, server_msg_id, window_ms).await
    }
    async fn history(
        &self,
        user: &str,
        kind: pb::ConversationKind,
        conversation: &str,
        before_seq: u64,
        limit: u32,
    ) -> Result<(Vec<pb::TimelineEntry>, bool), StoreError> {
        self.inner
            .history(user, kind, conversation, before_seq, limit)
            .await
    }
    async fn set_push_token(
        &self,
        user: &str,
        device: &str,
        platform: pb::Platform,
        provider: &str,
        token: &str,
    ) -> Result<(), StoreError> {
        self.inner
            .set_push_token(user, device, platform, provider, token)
            .await
    }
    async fn push_target(&self, user: &str) -> Result<PushTarget, StoreError> {
        self.inner.push_target(user).await
    }
    async fn webhook_enqueue(&self, hook: &str, payload: Vec<u8>) -> Result<(), StoreError> {
        self.inner.webhook_enqueue(hook, payload).await
    }
    async fn webhooks_due(
        &self,
        hook: &str,
        now_ms: u64,
        limit: u32,
    ) -> Result<Vec<WebhookJob>, StoreError> {
        self.inner.webhooks_due(hook, now_ms, limit).await
    }
    async fn webhook_done(&self, id: u64) -> Result<(), StoreError> {
        self.inner.webhook_done(id).await
    }
    async fn webhook_retry(&self, id: u64, next_at_ms: u64) -> Result<(), StoreError> {
        self.inner.webhook_retry(id, next_at_ms).await
    }
    async fn webhook_backlog(&self, hook: &str) -> Result<u64, StoreError> {
        self.inner.webhook_backlog(hook).await
    }
    async fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stored_while_a_login_reads_its_head_is_pushed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = tern_testkit::server::dev_config(dir.path());
    let store = Arc::new(HoldHead {
        inner: tern_server::server::open_store(&config).await.unwrap(),
        user: "bob",
        armed: AtomicBool::new(false),
        read: Notify::new(),
        release: Notify::new(),
    });
    let server = tern_server::server::start_with_store(config, store.clone())
        .await
        .unwrap();
    let (adir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (alice, _) = client(&server, adir.path(), "alice", "alice-phone");
    until_within("alice online", Duration::from_secs(10), || {
        alice.connection_state() == tern_client::ConnectionState::Connected
    })
    .await;

    // Bob logs in; his head is read, and held there.
    store.armed.store(true, Ordering::SeqCst);
    let (bob, bob_events) = client(&server, bdir.path(), "bob", "bob-phone");
    tokio::time::timeout(Duration::from_secs(10), store.read.notified())
        .await
        .expect("bob's login reads his head");
    // Meanwhile alice's message is stored (its send result is back).
    let sent = alice.send_text("bob", "in the window").unwrap();
    until_within("alice's message stored", Duration::from_secs(10), || {
        alice
            .message(sent.local_id)
            .unwrap()
            .is_some_and(|m| m.status != MessageStatus::Pending)
    })
    .await;
    store.release.notify_one();

    // Well inside bob's first heartbeat (30 s): the push, not the heartbeat, brings it.
    until_within("bob to get it", Duration::from_secs(5), || {
        bob_events.texts() == ["in the window"]
    })
    .await;
    assert_eq!(
        bob.messages(ConversationKind::Direct, "alice", None, 10)
            .unwrap()
            .len(),
        1
    );
    alice.shutdown();
    bob.shutdown();
    server.shutdown().await;
}
