//! Who is online, and where their pushes go.
//!
//! The registry maps a user to their live sessions. Registering a new session applies
//! the kickout policy and hands back the sessions it displaces; routing a timeline entry
//! to a user offers it to each of their sessions without ever blocking: a session whose
//! queue is full simply misses the live push and catches up by sync, because the
//! timeline (not the push) is the source of truth.
//!
//! It sits behind plain methods so that a multi-node deployment can replace it with
//! one that also forwards to other nodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tern_protocol::pb;
use tokio::sync::mpsc;

/// Which existing sessions a new login ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum KickPolicy {
    /// One session per platform (a phone and a desktop may both be online).
    #[default]
    PerPlatform,
    /// One session per user, whatever the platform.
    PerUser,
    /// Only a re-login of the same device replaces its old session (multi-device).
    PerDevice,
}

impl KickPolicy {
    /// Whether a new login of `device` on `platform` ends the session `old` of the same
    /// user, and with which command.
    pub fn displaces(
        self,
        old: &SessionInfo,
        device: &str,
        platform: pb::Platform,
    ) -> Option<SessionCmd> {
        let same_device = old.device == device;
        let conflict = same_device
            || match self {
                KickPolicy::PerUser => true,
                KickPolicy::PerPlatform => old.platform == platform,
                KickPolicy::PerDevice => false,
            };
        // Even for the same device id: a stale connection never sees the frame, but two
        // live clients sharing an id would otherwise replace each other forever, each
        // reconnecting after the other's login.
        conflict.then(|| SessionCmd::Kick {
            reason: pb::KickReason::LoginElsewhere,
            text: if same_device {
                "logged in again with this device id".to_owned()
            } else {
                format!("logged in on another device ({device})")
            },
        })
    }
}

/// Commands a session task receives.
#[derive(Debug, Clone)]
pub enum SessionCmd {
    /// Push this timeline entry (of the user's timeline, or of a large group's log).
    Push(Push),
    /// End the session with a kickout frame.
    Kick {
        /// Reason code.
        reason: pb::KickReason,
        /// Text for the app.
        text: String,
    },
}

/// A timeline entry to push, and which timeline it belongs to.
#[derive(Debug, Clone)]
pub struct Push {
    /// `None`: the user's own timeline; `Some(group)`: that large group's log.
    pub log: Option<Arc<str>>,
    /// The entry.
    pub entry: Arc<pb::TimelineEntry>,
}

/// A live session as the registry sees it.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Unique per server run.
    pub id: u64,
    /// The user.
    pub user: String,
    /// The device.
    pub device: String,
    /// The device's platform.
    pub platform: pb::Platform,
    /// Client address at login.
    pub remote: SocketAddr,
    /// Login time.
    pub since: SystemTime,
    /// The session task's queue.
    pub tx: mpsc::Sender<SessionCmd>,
}

/// Online sessions by user.
pub struct Registry {
    users: DashMap<String, Vec<SessionInfo>>,
    count: AtomicUsize,
    policy: KickPolicy,
    /// Most sessions of one user; a login beyond it ends that user's oldest session
    /// (so one token cannot take every slot of the server, and a user whose old
    /// devices linger is never locked out).
    per_user: usize,
}

impl Registry {
    /// An empty registry with `policy` and at most `per_user` sessions per user.
    pub fn new(policy: KickPolicy, per_user: usize) -> Self {
        Registry {
            users: DashMap::new(),
            count: AtomicUsize::new(0),
            policy,
            per_user: per_user.max(1),
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `info` unless `max` sessions are already live. The slot is reserved before
    /// the insert and held through it, so a login storm cannot overshoot the limit. On
    /// success returns the sessions it displaces (already removed), each with the
    /// command to send it.
    pub fn try_register(
        &self,
        info: SessionInfo,
        max: usize,
    ) -> Option<Vec<(SessionInfo, SessionCmd)>> {
        if self.count.fetch_add(1, Ordering::AcqRel) >= max {
            self.count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(self.insert_reserved(info))
    }

    /// Adds `info` whatever the count; returns the sessions it displaces.
    pub fn register(&self, info: SessionInfo) -> Vec<(SessionInfo, SessionCmd)> {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.insert_reserved(info)
    }

    fn insert_reserved(&self, info: SessionInfo) -> Vec<(SessionInfo, SessionCmd)> {
        let mut entry = self.users.entry(info.user.clone()).or_default();
        let mut displaced = vec![];
        let policy = self.policy;
        entry.retain(
            |old| match policy.displaces(old, &info.device, info.platform) {
                Some(cmd) => {
                    displaced.push((old.clone(), cmd));
                    false
                }
                None => true,
            },
        );
        // Oldest first: sessions are pushed in login order.
        while entry.len() >= self.per_user {
            let oldest = entry.remove(0);
            metrics::counter!("tern_sessions_over_user_limit_total").increment(1);
            displaced.push((
                oldest,
                SessionCmd::Kick {
                    reason: pb::KickReason::TooManySessions,
                    text: format!(
                        "at most {} sessions per user: the oldest was ended",
                        self.per_user
                    ),
                },
            ));
        }
        entry.push(info);
        drop(entry);
        self.count.fetch_sub(displaced.len(), Ordering::AcqRel);
        displaced
    }

    /// Removes session `id` of `user` if it is still registered.
    pub fn unregister(&self, user: &str, id: u64) {
        let mut removed = false;
        if let Some(mut list) = self.users.get_mut(user) {
            let before = list.len();
            list.retain(|s| s.id != id);
            removed = list.len() < before;
        }
        self.users.remove_if(user, |_, list| list.is_empty());
        if removed {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A session of `user` logged in on another node (with `device`, `platform`, at
    /// `since_ms`): removes the local sessions the kick policy says it displaces and
    /// returns them with the command to send. Only sessions that logged in before it
    /// give way, so two logins racing on two nodes cannot end each other.
    pub fn displace_for(
        &self,
        user: &str,
        device: &str,
        platform: pb::Platform,
        since_ms: Option<u64>,
    ) -> Vec<(SessionInfo, SessionCmd)> {
        let mut displaced = vec![];
        if let Some(mut list) = self.users.get_mut(user) {
            list.retain(|old| {
                let older = since_ms.is_none_or(|t| {
                    old.since
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64)
                        <= t
                });
                match self.policy.displaces(old, device, platform) {
                    Some(cmd) if older => {
                        displaced.push((old.clone(), cmd));
                        false
                    }
                    _ => true,
                }
            });
        }
        self.users.remove_if(user, |_, list| list.is_empty());
        self.count.fetch_sub(displaced.len(), Ordering::AcqRel);
        displaced
    }

    /// Offers `push` to `user`'s sessions except `except`. Returns how many took it.
    pub fn route(&self, user: &str, push: &Push, except: Option<u64>) -> usize {
        let Some(list) = self.users.get(user) else {
            return 0;
        };
        let mut n = 0;
        for s in list.iter().filter(|s| Some(s.id) != except) {
            match s.tx.try_send(SessionCmd::Push(push.clone())) {
                Ok(()) => n += 1,
                Err(_) => metrics::counter!("tern_push_queue_full_total").increment(1),
            }
        }
        n
    }

    /// Whether `user` has a live session.
    pub fn is_online(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|s| !s.is_empty())
    }

    /// The live sessions of `user`.
    pub fn sessions_of(&self, user: &str) -> Vec<SessionInfo> {
        self.users.get(user).map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends `cmd` to every session of `user`; returns how many.
    pub fn command_user(&self, user: &str, cmd: SessionCmd) -> usize {
        self.sessions_of(user)
            .iter()
            .filter(|s| s.tx.try_send(cmd.clone()).is_ok())
            .count()
    }

    /// Sends `cmd` to every session.
    pub fn command_all(&self, cmd: SessionCmd) -> usize {
        let all: Vec<SessionInfo> = self.users.iter().flat_map(|e| e.value().clone()).collect();
        all.iter()
            .filter(|s| s.tx.try_send(cmd.clone()).is_ok())
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(
        id: u64,
        device: &str,
        platform: pb::Platform,
    ) -> (SessionInfo, mpsc::Receiver<SessionCmd>) {
        let (tx, rx) = mpsc::channel(4);
        let s = SessionInfo {
            id,
            user: "alice".into(),
            device: device.into(),
            platform,
            remote: "127.0.0.1:1".parse().unwrap(),
            since: SystemTime::now(),
            tx,
        };
        (s, rx)
    }

    #[test]
    fn per_platform_policy_kicks_same_platform_and_replaces_same_device() {
        let r = Registry::new(KickPolicy::PerPlatform, 16);
        let (a, _ra) = info(1, "phone-1", pb::Platform::Android);
        let (b, _rb) = info(2, "desktop", pb::Platform::Desktop);
        assert!(r.register(a).is_empty());
        assert!(r.register(b).is_empty());
        let (c, _rc) = info(3, "phone-2", pb::Platform::Android);
        let out = r.register(c);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.id, 1);
        assert!(matches!(
            out[0].1,
            SessionCmd::Kick {
                reason: pb::KickReason::LoginElsewhere,
                ..
            }
        ));
        let (d, _rd) = info(4, "phone-2", pb::Platform::Android);
        assert!(
            matches!(&r.register(d)[0].1, SessionCmd::Kick { text, .. } if text.contains("this device id"))
        );
        assert_eq!(r.len(), 2);
        r.unregister("alice", 4);
        r.unregister("alice", 4);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn per_user_and_per_device_policies() {
        let r = Registry::new(KickPolicy::PerUser, 16);
        let (a, _ra) = info(1, "phone", pb::Platform::Android);
        let (b, _rb) = info(2, "desktop", pb::Platform::Desktop);
        r.register(a);
        assert_eq!(r.register(b).len(), 1);
        let r = Registry::new(KickPolicy::PerDevice, 16);
        let (a, _ra) = info(1, "phone", pb::Platform::Android);
        let (b, mut rb) = info(2, "phone-b", pb::Platform::Android);
        r.register(a);
        assert!(r.register(b).is_empty());
        let push = Push {
            log: None,
            entry: Arc::new(pb::TimelineEntry { seq: 1, body: None }),
        };
        assert_eq!(r.route("alice", &push, Some(1)), 1);
        assert!(matches!(rb.try_recv(), Ok(SessionCmd::Push(_))));
    }
}
