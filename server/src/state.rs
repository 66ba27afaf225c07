//! State shared by every session, the HTTP API and the background workers.
//!
//! Like mini-redis's `db.rs`, this module owns what the connection handlers share and
//! imports none of them: sessions, groups and the HTTP API depend on it, never the other
//! way round. It also holds the one piece of routing logic they all need: turning the
//! fan-out of a committed write into pushes to the sessions that are online.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tern_protocol::pb;
use tokio::sync::Semaphore;

use crate::auth::TokenVerifier;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::registry::{Push, Registry};
use crate::store::{Fanout, Store};
use crate::webhook::Webhooks;

/// State shared by every session.
pub struct Shared {
    /// Configuration.
    pub config: Config,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Token checks.
    pub verifier: Arc<dyn TokenVerifier>,
    /// Online sessions.
    pub registry: Registry,
    /// Logins in progress.
    pub login_permits: Semaphore,
    /// Connections accepted and not yet logged in (see [`crate::session::handle_incoming`]).
    pub unauthenticated: Arc<Semaphore>,
    /// Set when the server is draining.
    pub shutting_down: AtomicBool,
    /// Offline push and c2s webhooks.
    pub webhooks: Arc<Webhooks>,
    /// Members of large groups, for routing their log entries (see [`Shared::fan_out`]).
    pub log_members: dashmap::DashMap<String, Arc<Vec<String>>>,
    /// The link to the other nodes of a cluster (`None`: a single node).
    pub cluster: Option<Arc<Cluster>>,
    next_id: AtomicU64,
}

impl Shared {
    /// Shared state for a server.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        verifier: Arc<dyn TokenVerifier>,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        Shared {
            registry: Registry::new(config.kick_policy, config.max_sessions_per_user),
            unauthenticated: Arc::new(Semaphore::new(config.max_unauthenticated)),
            login_permits: Semaphore::new(config.max_concurrent_logins),
            shutting_down: AtomicBool::new(false),
            webhooks: Arc::new(Webhooks::new(
                crate::webhook::WebhookSettings::from(&config),
                store.clone(),
            )),
            log_members: dashmap::DashMap::new(),
            cluster,
            next_id: AtomicU64::new(1),
            config,
            store,
            verifier,
        }
    }

    /// A fresh session id, unique in this process.
    pub fn next_session_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A message was committed: schedules offline pushes for its recipients (`sender`
    /// excluded) and wakes the webhook worker for a c2s delivery, then routes the
    /// fan-out to online sessions (except `except`).
    pub fn message_stored(
        self: &Arc<Self>,
        sender: &str,
        to_service: bool,
        fanout: Vec<Fanout>,
        except: Option<u64>,
    ) {
        if to_service {
            self.webhooks.kick();
        }
        // In a cluster a user may be online on another node: the push webhook then
        // waits its delay for a device's ACK as for a local session.
        let maybe_online = |user: &str| self.cluster.is_some() || self.registry.is_online(user);
        self.webhooks.message_stored(maybe_online, sender, &fanout);
        self.fan_out(fanout, except);
    }

    /// Routes new timeline entries to online sessions (except the one that caused them):
    /// an entry of a user's timeline to that user's sessions, an entry of a large group's
    /// log to the sessions of every member. In a cluster each entry also goes to the
    /// user's subject (a large group's to the group's), which reaches the other nodes
    /// holding sessions of that user. A large group's members come from a cache (filled
    /// by a read on a miss, emptied by every membership change): the log, not the push,
    /// is the truth, so a push that misses a member who just joined is caught up by that
    /// member's next pull.
    pub fn fan_out(self: &Arc<Self>, fanout: Vec<Fanout>, except: Option<u64>) {
        for f in fanout {
            let entry = Arc::new(f.entry);
            let Some(route) = f.log else {
                let push = Push { log: None, entry };
                let n = self.registry.route(&f.user, &push, except);
                metrics::counter!("tern_pushes_routed_total").increment(n as u64);
                self.publish_push(&f.user, &push);
                continue;
            };
            self.route_log_entry(&route.group, entry, except, true);
        }
    }

    /// Routes an entry of large group `group`'s log to the local sessions of its
    /// members (except `except`); `publish`: also to the other nodes, once, on the
    /// group's subject (a node that received it from there does not pass it on).
    pub fn route_log_entry(
        self: &Arc<Self>,
        group: &str,
        entry: Arc<pb::TimelineEntry>,
        except: Option<u64>,
        publish: bool,
    ) {
        if !publish && matches!(entry.body, Some(pb::timeline_entry::Body::Group(_))) {
            // A membership change made on another node: this node's cache is stale.
            self.log_members.remove(group);
        }
        let push = Push {
            log: Some(Arc::from(group)),
            entry,
        };
        if publish {
            if let Some(cluster) = &self.cluster {
                cluster.publish_to(
                    &crate::cluster::Target::Group(group.to_owned()),
                    pb::cluster_message::Body::Push(pb::Push {
                        entry: Some((*push.entry).clone()),
                        log: group.to_owned(),
                    }),
                );
            }
        }
        let cached = self.log_members.get(group).map(|m| m.clone());
        if let Some(members) = cached {
            self.route_log(&members, &push, except);
            return;
        }
        let (shared, group) = (self.clone(), group.to_owned());
        tokio::spawn(async move {
            match shared.store.group_info(&group).await {
                Ok(Some(info)) => {
                    let members = Arc::new(info.members);
                    shared.log_members.insert(group, members.clone());
                    shared.route_log(&members, &push, except);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(%group, error = %e, "members not read; log entry left for pulls")
                }
            }
        });
    }

    fn route_log(&self, members: &[String], push: &Push, except: Option<u64>) {
        let n: usize = members
            .iter()
            .map(|m| self.registry.route(m, push, except))
            .sum();
        metrics::counter!("tern_pushes_routed_total").increment(n as u64);
    }

    /// In a cluster: `push` to the other nodes holding sessions of `user`.
    fn publish_push(&self, user: &str, push: &Push) {
        if let Some(cluster) = &self.cluster {
            cluster.publish(
                user,
                pb::cluster_message::Body::Push(pb::Push {
                    entry: Some((*push.entry).clone()),
                    log: push.log.as_deref().unwrap_or_default().to_owned(),
                }),
            );
        }
    }
}
