//! Push tokens and the webhook outbox on PostgreSQL.
//!
//! Several servers share one outbox: a worker *claims* due jobs with
//! `FOR UPDATE SKIP LOCKED` and a lease (`leased_until_ms`), so two workers never take
//! the same job, and a job of a server that died becomes due again when its lease ends.
//! An ordered hook (`c2s`: the business backend sees messages in order) is claimed only
//! while none of its jobs is leased, under a per-hook advisory lock, so its jobs go out
//! one at a time in order whichever server holds them.

use deadpool_postgres::GenericClient;
use tern_protocol::pb;

use super::{StoreError, Tx, execute, query, query_one};
use crate::store::{PushTarget, PushToken, WebhookJob};

/// How long a claimed job is held before another worker may take it (well above the
/// webhook request timeout).
pub(super) const LEASE_MS: u64 = 60_000;

pub(super) async fn set_push_token(
    tx: &Tx<'_>,
    user: &str,
    device: &str,
    platform: pb::Platform,
    provider: &str,
    token: &str,
) -> Result<(), StoreError> {
    if token.is_empty() {
        execute(
            tx,
            "DELETE FROM push_tokens WHERE uid = $1 AND device = $2",
            &[&user, &device],
        )
        .await?;
    } else {
        execute(
            tx,
            "INSERT INTO push_tokens (uid, device, platform, provider, token) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (uid, device) DO UPDATE SET platform = excluded.platform,
                 provider = excluded.provider, token = excluded.token",
            &[&user, &device, &(platform as i32), &provider, &token],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn push_target(
    c: &impl GenericClient,
    user: &str,
) -> Result<PushTarget, StoreError> {
    let tokens = query(
        c,
        "SELECT device, platform, provider, token FROM push_tokens WHERE uid = $1 ORDER BY device",
        &[&user],
    )
    .await?
    .iter()
    .map(|r| PushToken {
        device: r.get(0),
        platform: pb::Platform::try_from(r.get::<_, i32>(1))
            .unwrap_or(pb::Platform::Unspecified)
            .as_str_name()
            .to_owned(),
        provider: r.get(2),
        token: r.get(3),
    })
    .collect();
    let r = query_one(
        c,
        "SELECT (SELECT COALESCE(SUM(unread), 0)::bigint FROM conversations WHERE uid = $1),
                (SELECT COALESCE(MAX(delivered_seq), 0) FROM users WHERE uid = $1)",
        &[&user],
    )
    .await?;
    Ok(PushTarget {
        tokens,
        badge: r.get::<_, i64>(0) as u64,
        delivered_seq: r.get::<_, i64>(1) as u64,
    })
}

pub(super) async fn enqueue(tx: &Tx<'_>, hook: &str, payload: &[u8]) -> Result<(), StoreError> {
    execute(
        tx,
        "INSERT INTO webhook_outbox (hook, payload, next_at_ms) VALUES ($1, $2, 0)",
        &[&hook, &payload],
    )
    .await?;
    Ok(())
}

/// Whether `hook`'s deliveries must reach the backend in order (one at a time).
fn ordered(hook: &str) -> bool {
    hook == "c2s"
}

/// Claims up to `limit` due jobs of `hook` for this worker (see the module docs).
pub(super) async fn claim(
    tx: &Tx<'_>,
    hook: &str,
    now_ms: u64,
    limit: u32,
) -> Result<Vec<WebhookJob>, StoreError> {
    let now = now_ms.min(i64::MAX as u64 / 2) as i64;
    let mut limit = limit as i64;
    if ordered(hook) {
        execute(tx, "SELECT pg_advisory_xact_lock(hashtext($1))", &[&hook]).await?;
        let leased: i64 = query_one(
            tx,
            "SELECT COUNT(*) FROM webhook_outbox WHERE hook = $1 AND leased_until_ms > $2",
            &[&hook, &now],
        )
        .await?
        .get(0);
        if leased > 0 {
            return Ok(vec![]);
        }
        limit = limit.min(1);
    }
    let rows = query(
        tx,
        "UPDATE webhook_outbox SET leased_until_ms = $4 WHERE id IN (
             SELECT id FROM webhook_outbox WHERE hook = $1 AND next_at_ms <= $2 AND leased_until_ms <= $2
             ORDER BY next_at_ms, id LIMIT $3 FOR UPDATE SKIP LOCKED)
         RETURNING id, hook, payload, attempts, next_at_ms",
        &[&hook, &now, &limit, &(now + LEASE_MS as i64)],
    )
    .await?;
    // RETURNING has no order: oldest first, as the worker expects.
    let mut jobs: Vec<(i64, WebhookJob)> = rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(4),
                WebhookJob {
                    id: r.get::<_, i64>(0) as u64,
                    hook: r.get(1),
                    payload: r.get(2),
                    attempts: r.get::<_, i32>(3) as u32,
                },
            )
        })
        .collect();
    jobs.sort_by_key(|(at, j)| (*at, j.id));
    Ok(jobs.into_iter().map(|(_, j)| j).collect())
}

pub(super) async fn done(tx: &Tx<'_>, id: u64) -> Result<(), StoreError> {
    execute(
        tx,
        "DELETE FROM webhook_outbox WHERE id = $1",
        &[&(id as i64)],
    )
    .await?;
    Ok(())
}

pub(super) async fn retry(tx: &Tx<'_>, id: u64, next_at_ms: u64) -> Result<(), StoreError> {
    execute(
        tx,
        "UPDATE webhook_outbox SET attempts = attempts + 1, next_at_ms = $2, leased_until_ms = 0 WHERE id = $1",
        &[&(id as i64), &(next_at_ms.min(i64::MAX as u64) as i64)],
    )
    .await?;
    Ok(())
}
