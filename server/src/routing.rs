//! What a node does with what other nodes of its cluster tell it.
//!
//! [`crate::cluster`] receives messages on the subjects of this node's users; this
//! module applies them to the local sessions: a timeline entry is offered to the user's
//! sessions with the ordinary push QoS, a login elsewhere applies the kick policy, an
//! admin kick ends the sessions, a presence query is answered with the local sessions.
//! It sits apart from `cluster` so that the NATS link does not depend on the shared
//! state (no import cycle).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use tern_protocol::pb;
use tokio::sync::{mpsc, watch};

use crate::cluster::{Inbound, Target};
use crate::registry::{Push, SessionCmd, SessionInfo};
use crate::state::Shared;

/// Milliseconds since the epoch of a login time.
pub fn since_ms(s: &SessionInfo) -> u64 {
    s.since
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A local session as other nodes see it.
pub fn describe(node: &str, s: &SessionInfo) -> pb::ClusterSession {
    pb::ClusterSession {
        node: node.to_owned(),
        device: s.device.clone(),
        platform: s.platform as i32,
        since_ms: since_ms(s),
        remote: s.remote.to_string(),
    }
}

/// Applies what other nodes send until `stop` is set or the link is gone.
pub async fn run(
    shared: Arc<Shared>,
    mut inbound: mpsc::Receiver<Inbound>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            m = inbound.recv() => match m {
                Some(m) => apply(&shared, m),
                None => return,
            },
            _ = stop.changed() => return,
        }
    }
}

fn apply(shared: &Arc<Shared>, Inbound { target, msg }: Inbound) {
    use pb::cluster_message::Body;
    let Some(body) = msg.body else { return };
    let user = match target {
        Target::User(user) => user,
        Target::Group(group) => {
            // A large group's log entry: to this node's sessions of its members.
            if let Body::Push(p) = body {
                if let Some(entry) = p.entry {
                    shared.route_log_entry(&group, Arc::new(entry), None, false);
                }
            }
            return;
        }
    };
    match body {
        Body::Push(p) => {
            let Some(entry) = p.entry else { return };
            let push = Push {
                log: (!p.log.is_empty()).then(|| Arc::from(p.log.as_str())),
                entry: Arc::new(entry),
            };
            let n = shared.registry.route(&user, &push, None);
            metrics::counter!("tern_cluster_pushes_routed_total").increment(n as u64);
        }
        Body::Login(l) => {
            let platform = pb::Platform::try_from(l.platform).unwrap_or(pb::Platform::Unspecified);
            let displaced =
                shared
                    .registry
                    .displace_for(&user, &l.device, platform, Some(l.since_ms));
            for (old, cmd) in displaced {
                tracing::info!(user = %old.user, old_device = %old.device, new_device = %l.device, node = %msg.from_node, "session displaced by a login on another node");
                tokio::spawn(async move {
                    let _ = old.tx.send(cmd).await;
                });
            }
        }
        Body::Kick(k) => {
            let reason = pb::KickReason::try_from(k.reason).unwrap_or(pb::KickReason::Admin);
            let n = shared.registry.command_user(
                &user,
                SessionCmd::Kick {
                    reason,
                    text: k.text,
                },
            );
            tracing::info!(%user, sessions = n, node = %msg.from_node, "kick from another node");
        }
        Body::PresenceQuery(q) => {
            let Some(cluster) = &shared.cluster else {
                return;
            };
            let sessions: Vec<_> = shared
                .registry
                .sessions_of(&user)
                .iter()
                .map(|s| describe(cluster.node(), s))
                .collect();
            if !sessions.is_empty() && !q.reply_to.is_empty() {
                cluster.reply(
                    &q.reply_to,
                    Body::Presence(pb::ClusterPresence { sessions }),
                );
            }
        }
        Body::Presence(_) => {}
    }
}
