//! Push tokens and the webhook outbox.
//!
//! A webhook delivery is a row written in the same transaction as whatever caused it
//! (for c2s, the message itself), so "acknowledged to the sender" implies "will reach
//! the business backend". The delivery worker (`crate::webhook`) reads due rows, POSTs
//! them, and deletes them on a 2xx or pushes `next_at_ms` back on failure.

use rusqlite::{Connection, params};
use tern_protocol::pb;

use super::StoreError;
use super::tx::Tx;
use crate::store::{PushTarget, PushToken, WebhookJob};

pub(super) fn set_push_token(
    tx: &Tx<'_>,
    user: &str,
    device: &str,
    platform: pb::Platform,
    provider: &str,
    token: &str,
) -> Result<(), StoreError> {
    if token.is_empty() {
        tx.prepare_cached("DELETE FROM push_tokens WHERE user = ?1 AND device = ?2")?
            .execute(params![user, device])?;
    } else {
        tx.prepare_cached(
            "INSERT INTO push_tokens (user, device, platform, provider, token) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (user, device) DO UPDATE SET platform = excluded.platform,
                 provider = excluded.provider, token = excluded.token",
        )?
        .execute(params![user, device, platform as i32, provider, token])?;
    }
    Ok(())
}

pub(super) fn push_target(conn: &Connection, user: &str) -> Result<PushTarget, StoreError> {
    let tokens = conn
        .prepare_cached(
            "SELECT device, platform, provider, token FROM push_tokens WHERE user = ?1 ORDER BY device",
        )?
        .query_map(params![user], |r| {
            let platform: i32 = r.get(1)?;
            Ok(PushToken {
                device: r.get(0)?,
                platform: pb::Platform::try_from(platform)
                    .unwrap_or(pb::Platform::Unspecified)
                    .as_str_name()
                    .to_owned(),
                provider: r.get(2)?,
                token: r.get(3)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let badge: i64 = conn
        .prepare_cached("SELECT COALESCE(SUM(unread), 0) FROM conversations WHERE user = ?1")?
        .query_row(params![user], |r| r.get(0))?;
    let delivered: i64 = conn
        .prepare_cached("SELECT COALESCE(MAX(delivered_seq), 0) FROM users WHERE user = ?1")?
        .query_row(params![user], |r| r.get(0))?;
    Ok(PushTarget {
        tokens,
        badge: badge as u64,
        delivered_seq: delivered as u64,
    })
}

pub(super) fn enqueue(tx: &Tx<'_>, hook: &str, payload: &[u8]) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO webhook_outbox (hook, payload, next_at_ms) VALUES (?1, ?2, 0)")?
        .execute(params![hook, payload])?;
    Ok(())
}

pub(super) fn due(
    conn: &Connection,
    hook: &str,
    now_ms: u64,
    limit: u32,
) -> Result<Vec<WebhookJob>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, hook, payload, attempts FROM webhook_outbox WHERE hook = ?3 AND next_at_ms <= ?1
             ORDER BY next_at_ms, id LIMIT ?2",
        )?
        .query_map(
            params![now_ms.min(i64::MAX as u64) as i64, limit as i64, hook],
            |r| {
                Ok(WebhookJob {
                    id: r.get::<_, i64>(0)? as u64,
                    hook: r.get(1)?,
                    payload: r.get(2)?,
                    attempts: r.get(3)?,
                })
            },
        )?
        .collect::<Result<_, _>>()?)
}

pub(super) fn done(tx: &Tx<'_>, id: u64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM webhook_outbox WHERE id = ?1")?
        .execute(params![id as i64])?;
    Ok(())
}

pub(super) fn retry(tx: &Tx<'_>, id: u64, next_at_ms: u64) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE webhook_outbox SET attempts = attempts + 1, next_at_ms = ?2 WHERE id = ?1",
    )?
    .execute(params![id as i64, next_at_ms as i64])?;
    Ok(())
}
