//! The link between the nodes of a cluster: NATS subjects, and nothing durable.
//!
//! Several `tern-server` nodes share one PostgreSQL store, which holds everything that
//! must survive; what one node commits for a user whose sessions live on another node
//! reaches that node over NATS, as a *hint* to push. A hint that is lost costs only
//! the live push: the entry is in the store, and the client's gap sync fetches it.
//!
//! **Subjects are per user**: `tern.u.<user>`. A node subscribes to the subject of each
//! user it holds at least one session of, and publishes every timeline entry it commits
//! for a user to that user's subject. NATS's own interest graph is then the session
//! directory: it forwards a publish only to the nodes that subscribed, and drops one
//! nobody subscribed to at the NATS server, so a node never receives a user's traffic
//! unless that user is connected to it, and no registry table has to be kept right
//! across node failures (a dead node's subscriptions die with its NATS connection).
//! The same subject carries the user's login events (the kick policy across nodes),
//! admin kicks and presence queries. A large group's log entries (read diffusion) go
//! once to the group's subject, `tern.g.<group>`, which a node subscribes to while it
//! holds a session of a member: a group message costs one publish and one delivery per
//! node with members online, not one per member. The connection is made with `no_echo`: a node
//! never receives what it published itself (it already routed it locally).
//!
//! This module only knows NATS and the wire format (`pb::ClusterMessage`); what a node
//! does with an incoming message is [`crate::routing`]'s business, which keeps this
//! module free of the shared state (no import cycle).

pub mod cid;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;
use tern_protocol::pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Cluster settings (docs/operations.md, "Cluster").
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// NATS server URL(s), comma-separated (`nats://10.0.0.5:4222,nats://10.0.0.6:4222`).
    pub nats_url: String,
    /// This node's name: unique in the cluster, shown in presence answers and logs.
    pub node: String,
    /// This node's number (0–65535): the first two bytes of every QUIC connection ID
    /// it issues, so a load balancer can route a migrated client back to it.
    pub node_number: u16,
}

/// Publishes waiting to be written to NATS; beyond this they are dropped (and counted):
/// a stalled NATS connection must not grow the server's memory, and a dropped hint
/// only costs a live push.
pub const PUBLISH_QUEUE: usize = 65_536;
/// How long a presence query waits for other nodes' answers.
pub const PRESENCE_WAIT: Duration = Duration::from_millis(150);

/// Why the cluster link could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The NATS server could not be reached at start.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL tried.
        url: String,
        /// The cause.
        source: async_nats::ConnectError,
    },
    /// A subscription failed (the NATS connection is closed).
    #[error("NATS subscribe failed: {0}")]
    Subscribe(#[from] async_nats::SubscribeError),
}

/// Whose subject a message came on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A user's: entries of their timeline, logins, kicks, presence queries.
    User(String),
    /// A large group's: entries of its log (read diffusion), once for all members.
    Group(String),
}

impl Target {
    /// The NATS subject. Ids may hold `.` (NATS's token separator); it becomes `~`,
    /// which ids cannot hold, so the mapping stays one to one.
    pub fn subject(&self) -> String {
        match self {
            Target::User(u) => format!("tern.u.{}", u.replace('.', "~")),
            Target::Group(g) => format!("tern.g.{}", g.replace('.', "~")),
        }
    }
}

/// A message from another node, for one of this node's users or large groups.
#[derive(Debug)]
pub struct Inbound {
    /// The subject it came on.
    pub target: Target,
    /// The message.
    pub msg: pb::ClusterMessage,
}

struct Sub {
    holders: usize,
    task: JoinHandle<()>,
}

/// Keeps a subject subscribed on this node while it lives (a session holds one for its
/// user and one per large group of the user).
pub struct Watch {
    cluster: Arc<Cluster>,
    target: Target,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.cluster.unwatch(&self.target);
    }
}

/// This node's NATS link.
pub struct Cluster {
    settings: ClusterSettings,
    client: async_nats::Client,
    subs: Mutex<HashMap<Target, Sub>>,
    inbound: mpsc::Sender<Inbound>,
    publish: mpsc::Sender<(String, Bytes)>,
    /// Test hook: drop this share (parts per million) of outgoing publishes on purpose.
    drop_ppm: AtomicU64,
    drop_rng: AtomicU64,
    publisher: Mutex<Option<JoinHandle<()>>>,
}

/// The subject of `user`'s traffic.
pub fn user_subject(user: &str) -> String {
    Target::User(user.to_owned()).subject()
}

impl Cluster {
    /// Connects to NATS (retrying in the background if it is down at start, so a node
    /// starts with its store alone and joins routing when NATS comes), and returns the
    /// link and the receiver of what other nodes send this one.
    pub async fn connect(
        settings: ClusterSettings,
    ) -> Result<(Arc<Cluster>, mpsc::Receiver<Inbound>), ClusterError> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("tern-server {}", settings.node))
            .no_echo()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(3))
            .ping_interval(Duration::from_secs(10))
            // Reconnect fast: while NATS is away only live pushes between nodes stop.
            .reconnect_delay_callback(|n| Duration::from_millis((100 * n as u64).min(2_000)))
            .event_callback(|e| async move {
                tracing::info!(event = %e, "NATS");
            })
            .connect(settings.nats_url.as_str())
            .await
            .map_err(|source| ClusterError::Connect {
                url: settings.nats_url.clone(),
                source,
            })?;
        let (inbound, inbound_rx) = mpsc::channel(4096);
        let (publish, mut publish_rx) = mpsc::channel::<(String, Bytes)>(PUBLISH_QUEUE);
        let cluster = Arc::new(Cluster {
            settings,
            client: client.clone(),
            subs: Mutex::new(HashMap::new()),
            inbound,
            publish,
            drop_ppm: AtomicU64::new(0),
            drop_rng: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            publisher: Mutex::new(None),
        });
        let writer = tokio::spawn(async move {
            while let Some((subject, payload)) = publish_rx.recv().await {
                let len = payload.len();
                match client.publish(subject, payload).await {
                    Ok(()) => {
                        metrics::counter!("tern_cluster_published_total").increment(1);
                        metrics::counter!("tern_cluster_published_bytes_total")
                            .increment(len as u64);
                    }
                    Err(e) => {
                        metrics::counter!("tern_cluster_publish_failed_total").increment(1);
                        tracing::debug!(error = %e, "NATS publish failed");
                    }
                }
            }
        });
        *cluster.publisher.lock().expect("lock") = Some(writer);
        // Chaos testing only: lose a share of the publishes, to prove that the store and
        // the clients' sync carry every message without them.
        if let Some(share) = std::env::var("TERN_CHAOS_NATS_DROP")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
        {
            tracing::warn!(
                share,
                "TERN_CHAOS_NATS_DROP: dropping cluster publishes on purpose"
            );
            cluster.set_publish_drop(share);
        }
        Ok((cluster, inbound_rx))
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.settings.node
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// NATS traffic of this node so far: (bytes out, messages out, bytes in, messages in).
    pub fn traffic(&self) -> (u64, u64, u64, u64) {
        let s = self.client.statistics();
        (
            s.out_bytes.load(Ordering::Relaxed),
            s.out_messages.load(Ordering::Relaxed),
            s.in_bytes.load(Ordering::Relaxed),
            s.in_messages.load(Ordering::Relaxed),
        )
    }

    /// Whether the NATS connection is up now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Test hook: drop this share (0.0–1.0) of the publishes from now on, as a lossy
    /// NATS would, to prove that nothing depends on them.
    pub fn set_publish_drop(&self, share: f64) {
        self.drop_ppm
            .store((share.clamp(0.0, 1.0) * 1e6) as u64, Ordering::Relaxed);
    }

    /// Starts receiving `user`'s subject (if this node does not already) and waits until
    /// the NATS server has the subscription, so anything published after this returns
    /// reaches the node. The subscription lasts while a returned guard does.
    pub async fn watch(self: &Arc<Self>, user: &str) -> Result<Watch, ClusterError> {
        self.watch_target(Target::User(user.to_owned())).await
    }

    /// The same for a large group's subject (its log entries, once per node).
    pub async fn watch_group(self: &Arc<Self>, group: &str) -> Result<Watch, ClusterError> {
        self.watch_target(Target::Group(group.to_owned())).await
    }

    async fn watch_target(self: &Arc<Self>, target: Target) -> Result<Watch, ClusterError> {
        let guard = Watch {
            cluster: self.clone(),
            target: target.clone(),
        };
        {
            let mut subs = self.subs.lock().expect("lock");
            if let Some(s) = subs.get_mut(&target) {
                s.holders += 1;
                return Ok(guard);
            }
        }
        let mut sub = self.client.subscribe(target.subject()).await?;
        let (tx, owner) = (self.inbound.clone(), target.clone());
        let task = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                match pb::ClusterMessage::decode(m.payload) {
                    Ok(msg) => {
                        let inbound = Inbound {
                            target: owner.clone(),
                            msg,
                        };
                        if tx.send(inbound).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        metrics::counter!("tern_cluster_bad_messages_total").increment(1);
                        tracing::warn!(target = ?owner, error = %e, "undecodable cluster message dropped");
                    }
                }
            }
        });
        let raced = {
            let mut subs = self.subs.lock().expect("lock");
            match subs.get_mut(&target) {
                // Another session subscribed meanwhile: keep one.
                Some(s) => {
                    s.holders += 1;
                    Some(task)
                }
                None => {
                    subs.insert(target, Sub { holders: 1, task });
                    None
                }
            }
        };
        if let Some(extra) = raced {
            extra.abort();
        }
        // The subscription is on the NATS server once a flush round trip returns. With
        // NATS away there is nothing to wait for (a login must not): the subscription
        // is replayed on reconnect, and until then the store and sync carry the user's
        // messages.
        if self.connected() {
            let flushed = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
            if !matches!(flushed, Ok(Ok(()))) {
                tracing::debug!("NATS flush after subscribe did not complete");
            }
        }
        Ok(guard)
    }

    /// Ends one watch of `target`; the last one unsubscribes.
    fn unwatch(&self, target: &Target) {
        let mut subs = self.subs.lock().expect("lock");
        if let Some(s) = subs.get_mut(target) {
            s.holders -= 1;
            if s.holders == 0 {
                if let Some(s) = subs.remove(target) {
                    // Dropping the subscriber (with the task) unsubscribes.
                    s.task.abort();
                }
            }
        }
    }

    /// Whether this node receives `group`'s subject now.
    pub fn watches_group(&self, group: &str) -> bool {
        self.subs
            .lock()
            .expect("lock")
            .contains_key(&Target::Group(group.to_owned()))
    }

    /// Subjects (users and large groups) this node subscribes to.
    pub fn watched(&self) -> usize {
        self.subs.lock().expect("lock").len()
    }

    /// Sends `body` to the other nodes holding sessions of `user`. Never waits: when
    /// the queue to NATS is full the message is dropped and counted.
    pub fn publish(&self, user: &str, body: pb::cluster_message::Body) {
        self.publish_to(&Target::User(user.to_owned()), body);
    }

    /// Sends `body` on `target`'s subject (see [`Cluster::publish`]).
    pub fn publish_to(&self, target: &Target, body: pb::cluster_message::Body) {
        let ppm = self.drop_ppm.load(Ordering::Relaxed);
        if ppm > 0 && self.next_random() % 1_000_000 < ppm {
            metrics::counter!("tern_cluster_dropped_on_purpose_total").increment(1);
            return;
        }
        self.enqueue(target.subject(), body);
    }

    /// Sends `msg` to one subject (a presence query's `reply_to`).
    pub fn reply(&self, subject: &str, body: pb::cluster_message::Body) {
        self.enqueue(subject.to_owned(), body);
    }

    /// `body` from this node, encoded.
    fn encode(&self, body: pb::cluster_message::Body) -> Bytes {
        let msg = pb::ClusterMessage {
            from_node: self.settings.node.clone(),
            body: Some(body),
        };
        Bytes::from(msg.encode_to_vec())
    }

    /// Queues `body` for `subject` without waiting; a full queue drops it (counted).
    fn enqueue(&self, subject: String, body: pb::cluster_message::Body) {
        if self.publish.try_send((subject, self.encode(body))).is_err() {
            metrics::counter!("tern_cluster_publish_dropped_total").increment(1);
        }
    }

    /// The sessions of `user` on the other nodes: asks on the user's subject and
    /// collects the answers for [`PRESENCE_WAIT`] (a node holding none does not receive
    /// the question). A node that does not answer in time is not counted.
    pub async fn remote_sessions(&self, user: &str) -> Vec<pb::ClusterSession> {
        let inbox = self.client.new_inbox();
        let Ok(mut answers) = self.client.subscribe(inbox.clone()).await else {
            return vec![];
        };
        let query = self.encode(pb::cluster_message::Body::PresenceQuery(
            pb::ClusterPresenceQuery { reply_to: inbox },
        ));
        if self
            .client
            .publish(user_subject(user), query)
            .await
            .is_err()
        {
            return vec![];
        }
        let mut out = vec![];
        let end = Instant::now() + PRESENCE_WAIT;
        while let Ok(Some(m)) = tokio::time::timeout_at(end.into(), answers.next()).await {
            if let Ok(pb::ClusterMessage {
                body: Some(pb::cluster_message::Body::Presence(p)),
                ..
            }) = pb::ClusterMessage::decode(m.payload)
            {
                out.extend(p.sessions);
            }
        }
        out
    }

    /// Writes what is queued and closes the NATS connection (shutdown).
    pub async fn close(&self) {
        for (_, s) in self.subs.lock().expect("lock").drain() {
            s.task.abort();
        }
        // Let the writer empty its queue briefly, then flush what it wrote.
        let deadline = Instant::now() + Duration::from_millis(500);
        while self.publish.capacity() < PUBLISH_QUEUE && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
        if let Some(w) = self.publisher.lock().expect("lock").take() {
            w.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.drain()).await;
    }

    fn next_random(&self) -> u64 {
        // xorshift: a test hook needs no cryptographic randomness.
        let mut x = self.drop_rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.drop_rng.store(x, Ordering::Relaxed);
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_user_ids_apart() {
        assert_eq!(user_subject("alice"), "tern.u.alice");
        assert_eq!(user_subject("bob.smith@x"), "tern.u.bob~smith@x");
        assert_eq!(Target::Group("g.1".into()).subject(), "tern.g.g~1");
        // `~` never occurs in a user id, so no two users share a subject.
        assert!(!tern_protocol::is_valid_user_id("a~b"));
    }
}
