//! State shared by every session, the HTTP API and the background workers.
//!
//! Like mini-redis's `db.rs`, this module owns what the connection handlers share and
//! imports none of them: sessions, groups and the HTTP API depend on it, never the other
//! way round. It also holds the one piece of routing logic they all need: turning the
//! fan-out of a committed write into pushes to the sessions that are online.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Semaphore;

use crate::auth::TokenVerifier;
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
    next_id: AtomicU64,
}

impl Shared {
    /// Shared state for a server.
    pub fn new(config: Config, store: Arc<dyn Store>, verifier: Arc<dyn TokenVerifier>) -> Self {
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
        self.webhooks
            .message_stored(&self.registry, sender, &fanout);
        self.fan_out(fanout, except);
    }

    /// Routes new timeline entries to online sessions (except the one that caused them):
    /// an entry of a user's timeline to that user's sessions, an entry of a large group's
    /// log to the sessions of every member. A large group's members come from a cache
    /// (filled by a read on a miss, emptied by every membership change): the log, not the
    /// push, is the truth, so a push that misses a member who just joined is caught up
    /// by that member's next pull.
    pub fn fan_out(self: &Arc<Self>, fanout: Vec<Fanout>, except: Option<u64>) {
        for f in fanout {
            let entry = Arc::new(f.entry);
            let Some(route) = f.log else {
                let n = self
                    .registry
                    .route(&f.user, &Push { log: None, entry }, except);
                metrics::counter!("tern_pushes_routed_total").increment(n as u64);
                continue;
            };
            let push = Push {
                log: Some(Arc::from(route.group.as_str())),
                entry,
            };
            let cached = self.log_members.get(&route.group).map(|m| m.clone());
            if let Some(members) = cached {
                self.route_log(&members, &push, except);
                continue;
            }
            let shared = self.clone();
            tokio::spawn(async move {
                match shared.store.group_info(&route.group).await {
                    Ok(Some(info)) => {
                        let members = Arc::new(info.members);
                        shared
                            .log_members
                            .insert(route.group.clone(), members.clone());
                        shared.route_log(&members, &push, except);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(group = %route.group, error = %e, "members not read; log entry left for pulls")
                    }
                }
            });
        }
    }

    fn route_log(&self, members: &[String], push: &Push, except: Option<u64>) {
        let n: usize = members
            .iter()
            .map(|m| self.registry.route(m, push, except))
            .sum();
        metrics::counter!("tern_pushes_routed_total").increment(n as u64);
    }
}
