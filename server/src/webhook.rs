//! Webhooks: the offline push bridge and c2s delivery to the business backend.
//!
//! Both go through one durable outbox in the store (see `store::sqlite::outbox`), each
//! hook with its own delivery worker here (a slow endpoint of one never delays the
//! other), and they share retry, signing and metrics:
//!
//! * **c2s**: a message to a service account queues its delivery in the same
//!   transaction that stores the message. The worker POSTs it until the backend
//!   answers 2xx (backoff from 1 s doubling to 5 min; never dropped).
//! * **push**: after a message is stored, every recipient who has no session gets a
//!   push now; one who is online gets it only if none of their devices ACKed the entry
//!   within `push_webhook_delay` (a phone whose app was just suspended). The push job
//!   carries a preview, the badge (total unread) and the registered device tokens;
//!   APNs/FCM themselves are the deployment's bridge. A push is retried for 10 attempts
//!   (~1 h), then dropped with a log line: a stale notification is worse than none,
//!   and the message itself is safe in the timeline. The delay timers live in memory;
//!   a restart during the delay skips that push (the message is still synced).
//!
//! Every request carries `X-Tern-Hook`, `X-Tern-Timestamp` (unix seconds) and
//! `X-Tern-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, so the
//! receiver can check origin and freshness (see docs/operations.md).

use std::sync::Arc;
use std::time::Duration;

use hmac::Mac;
use tern_protocol::backoff::BackoffConfig;
use tern_protocol::pb;
use tokio::sync::{Notify, watch};

use crate::config::Config;
use crate::store::{Fanout, Store, StoreError, WebhookJob};

/// Longest text in a push preview, in characters.
pub const PREVIEW_CHARS: usize = 100;
/// Push deliveries are dropped after this many failed attempts.
const PUSH_MAX_ATTEMPTS: u32 = 10;
/// Per-request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often each worker counts its hook's backlog (`tern_webhook_backlog`).
const BACKLOG_EVERY: Duration = Duration::from_secs(5);
/// Push deliveries under way at once.
pub const PUSH_CONCURRENCY: usize = 16;

/// Hex HMAC-SHA256 of `"<timestamp>.<body>"`: the `v1=` value of `X-Tern-Signature`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    crate::auth::sign(secret, &[ts.as_bytes(), b".", body])
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn retry_backoff() -> BackoffConfig {
    BackoffConfig {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
        stable_after: Duration::ZERO,
    }
}

/// The part of the configuration webhooks need.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Offline push endpoint (none: no pushes).
    pub push_url: Option<String>,
    /// c2s endpoint for messages to service accounts.
    pub service_url: Option<String>,
    /// HMAC key of `X-Tern-Signature`.
    pub secret: Vec<u8>,
    /// How long an online recipient has to ACK before the push goes anyway.
    pub push_delay: Duration,
}

impl From<&Config> for WebhookSettings {
    fn from(c: &Config) -> Self {
        WebhookSettings {
            push_url: c.push_webhook_url.clone(),
            service_url: c.service_webhook_url.clone(),
            secret: c.webhook_secret.clone(),
            push_delay: c.push_webhook_delay,
        }
    }
}

/// The webhook side of a server: schedules offline pushes and runs the worker.
pub struct Webhooks {
    settings: WebhookSettings,
    store: Arc<dyn Store>,
    wake_push: Notify,
    wake_c2s: Notify,
    http: reqwest::Client,
}

impl Webhooks {
    /// A worker handle (not started).
    pub fn new(settings: WebhookSettings, store: Arc<dyn Store>) -> Self {
        // reqwest is built without a bundled provider: use ring, like quinn. (Already
        // installed is fine.)
        let _ = rustls::crypto::ring::default_provider().install_default();
        Webhooks {
            settings,
            store,
            wake_push: Notify::new(),
            wake_c2s: Notify::new(),
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("the HTTP client builds with a crypto provider installed"),
        }
    }

    /// Wakes the workers (new jobs were queued).
    pub fn kick(&self) {
        self.wake_push.notify_one();
        self.wake_c2s.notify_one();
    }

    /// Runs the delivery workers until `stop` turns true (deliveries under way finish or
    /// time out first; what is left stays in the durable outbox).
    ///
    /// One worker per hook, each with its own queue, so a hung service endpoint never
    /// delays offline pushes (nor the reverse). Pushes are delivered
    /// [`PUSH_CONCURRENCY`] at a time (one slow call holds one slot); c2s deliveries
    /// one at a time, so the business backend gets a user's messages in order.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut workers = vec![];
        if self.settings.push_url.is_some() {
            workers.push(tokio::spawn(self.clone().worker(
                "push",
                PUSH_CONCURRENCY,
                stop.clone(),
            )));
        }
        if self.settings.service_url.is_some() {
            workers.push(tokio::spawn(self.clone().worker("c2s", 1, stop.clone())));
        }
        for w in workers {
            let _ = w.await;
        }
        tracing::debug!("webhook workers stopped");
    }

    async fn worker(
        self: Arc<Self>,
        hook: &'static str,
        concurrency: usize,
        mut stop: watch::Receiver<bool>,
    ) {
        let wake = if hook == "push" {
            &self.wake_push
        } else {
            &self.wake_c2s
        };
        let mut in_flight = tokio::task::JoinSet::new();
        let mut busy = std::collections::HashSet::new();
        let mut counted_at: Option<std::time::Instant> = None;
        while !*stop.borrow() {
            // The backlog (what alerting watches), counted every few seconds.
            if counted_at.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY) {
                counted_at = Some(std::time::Instant::now());
                if let Ok(n) = self.store.webhook_backlog(hook).await {
                    metrics::gauge!("tern_webhook_backlog", "hook" => hook).set(n as f64);
                }
            }
            let room = concurrency - in_flight.len();
            let mut started = 0;
            if room > 0 {
                // Jobs under way are still due: ask for enough to find `room` others.
                let limit = (room + busy.len()) as u32;
                match self
                    .store
                    .webhooks_due(hook, tern_protocol::unix_ms(), limit)
                    .await
                {
                    Ok(due) => {
                        let fresh: Vec<WebhookJob> = due
                            .into_iter()
                            .filter(|j| !busy.contains(&j.id))
                            .take(room)
                            .collect();
                        for job in fresh {
                            busy.insert(job.id);
                            in_flight.spawn(self.clone().deliver(job));
                            started += 1;
                        }
                    }
                    Err(e) => tracing::error!(hook, error = %e, "webhook outbox unreadable"),
                }
            }
            metrics::gauge!("tern_webhooks_in_flight", "hook" => hook).set(in_flight.len() as f64);
            tokio::select! {
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Ok(id) = done {
                        busy.remove(&id);
                    }
                }
                // Nothing new started: wait for new jobs (or a retry coming due).
                _ = tokio::time::timeout(Duration::from_millis(500), wake.notified()), if started == 0 => {}
                _ = stop.changed() => {}
            }
        }
        while in_flight.join_next().await.is_some() {}
        metrics::gauge!("tern_webhooks_in_flight", "hook" => hook).set(0.0);
    }

    /// One delivery attempt and its outcome in the outbox; returns the job id.
    async fn deliver(self: Arc<Self>, job: WebhookJob) -> u64 {
        let cfg = &self.settings;
        let url = match job.hook.as_str() {
            "c2s" => cfg.service_url.as_deref(),
            _ => cfg.push_url.as_deref(),
        };
        let started = std::time::Instant::now();
        let outcome = match url {
            Some(url) => self.post(url, &job.hook, &job.payload).await,
            None => Err("no URL configured for this hook".into()),
        };
        metrics::histogram!("tern_webhook_seconds", "hook" => job.hook.clone())
            .record(started.elapsed().as_secs_f64());
        let result = match outcome {
            Ok(()) => {
                metrics::counter!("tern_webhooks_total", "hook" => job.hook.clone(), "result" => "ok").increment(1);
                self.store.webhook_done(job.id).await
            }
            Err(why) if job.hook == "push" && job.attempts + 1 >= PUSH_MAX_ATTEMPTS => {
                tracing::warn!(id = job.id, %why, attempts = job.attempts + 1, "push webhook dropped after retries");
                metrics::counter!("tern_webhooks_total", "hook" => job.hook.clone(), "result" => "dropped").increment(1);
                self.store.webhook_done(job.id).await
            }
            Err(why) => {
                let delay = retry_backoff().ceiling(job.attempts);
                // Jitter in [delay/2, delay]: many failing jobs do not retry in step.
                let delay = delay / 2
                    + Duration::from_millis(rand::random_range(0..=delay.as_millis() as u64 / 2));
                tracing::info!(id = job.id, hook = %job.hook, %why, retry_in_ms = delay.as_millis() as u64, "webhook failed; will retry");
                metrics::counter!("tern_webhooks_total", "hook" => job.hook.clone(), "result" => "retry").increment(1);
                self.store
                    .webhook_retry(job.id, tern_protocol::unix_ms() + delay.as_millis() as u64)
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(id = job.id, error = %e, "webhook outbox not updated");
        }
        job.id
    }

    async fn post(&self, url: &str, hook: &str, body: &[u8]) -> Result<(), String> {
        let ts = tern_protocol::unix_ms() / 1000;
        let sig = signature(&self.settings.secret, ts, body);
        let resp = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("x-tern-hook", hook)
            .header("x-tern-timestamp", ts.to_string())
            .header("x-tern-signature", format!("v1={sig}"))
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", resp.status()))
        }
    }

    /// Called with the fan-out of a newly stored message (`sender` excluded): schedules
    /// the offline push for every recipient entry (`online` tells who may be online:
    /// their push waits the delay for a device's ACK).
    pub fn message_stored(
        self: &Arc<Self>,
        online: impl Fn(&str) -> bool,
        sender: &str,
        fanout: &[Fanout],
    ) {
        if self.settings.push_url.is_none() {
            return;
        }
        // Not for large groups' logs: a push per member of a huge group per message is
        // what read diffusion avoids (their apps poll or use their own notifications).
        for f in fanout
            .iter()
            .filter(|f| f.user != sender && f.log.is_none())
        {
            let Some(pb::timeline_entry::Body::Message(m)) = &f.entry.body else {
                continue;
            };
            let (hooks, user, seq, m) = (self.clone(), f.user.clone(), f.entry.seq, m.clone());
            let online = online(&user);
            tokio::spawn(async move {
                if online {
                    tokio::time::sleep(hooks.settings.push_delay).await;
                }
                if let Err(e) = hooks.queue_push(&user, seq, &m).await {
                    tracing::warn!(%user, seq, error = %e, "offline push not queued");
                }
            });
        }
    }

    async fn queue_push(
        &self,
        user: &str,
        seq: u64,
        m: &pb::StoredMessage,
    ) -> Result<(), StoreError> {
        let target = self.store.push_target(user).await?;
        if target.delivered_seq >= seq {
            return Ok(()); // a device has it
        }
        if target.tokens.is_empty() {
            metrics::counter!("tern_push_webhook_skipped_total", "why" => "no_token").increment(1);
            return Ok(());
        }
        let text = std::str::from_utf8(&m.body)
            .ok()
            .filter(|_| m.content_type == 0)
            .map(|t| t.chars().take(PREVIEW_CHARS).collect::<String>());
        let kind = pb::ConversationKind::try_from(m.kind).unwrap_or(pb::ConversationKind::Direct);
        let payload = serde_json::json!({
            "type": "push",
            "user": user,
            "badge": target.badge,
            "tokens": target.tokens,
            "seq": seq,
            "message": {
                "server_msg_id": m.server_msg_id,
                "sender": m.sender,
                "conversation_kind": kind.as_str_name(),
                "conversation": if kind == pb::ConversationKind::Group { &m.recipient } else { &m.sender },
                "content_type": m.content_type,
                "preview": text,
            },
        });
        self.store
            .webhook_enqueue(
                "push",
                serde_json::to_vec(&payload).expect("JSON serialises"),
            )
            .await?;
        self.kick();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // Reference value computed independently (Python: hmac.new(b"k"*16,
        // b"1700000000.{}", sha256).hexdigest()).
        let sig = signature(&[b'k'; 16], 1_700_000_000, b"{}");
        assert_eq!(
            sig,
            "6d58fb78491a4cd45b0a5944663cf2020c2185a67defd8caec14059846f09e3d"
        );
        assert_ne!(sig, signature(&[b'k'; 16], 1_700_000_001, b"{}"));
        assert_ne!(sig, signature(&[b'j'; 16], 1_700_000_000, b"{}"));
    }
}
