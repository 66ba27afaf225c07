//! The per-device send order on PostgreSQL (`devices.send_seq`), checked and advanced
//! inside the write that stores the message, as in the SQLite store.

use deadpool_postgres::GenericClient;

use super::{StoreError, Tx, execute, query_opt};

/// The last send seq taken from `device` of `user` (0 if none).
pub(super) async fn last_send_seq(
    c: &impl GenericClient,
    user: &str,
    device: &str,
) -> Result<u64, StoreError> {
    Ok(query_opt(
        c,
        "SELECT send_seq FROM devices WHERE uid = $1 AND device = $2",
        &[&user, &device],
    )
    .await?
    .map_or(0, |r| r.get::<_, i64>(0) as u64))
}

/// Takes `send_seq` if it is the next one of the device, else
/// [`StoreError::OutOfOrder`] with the one expected. The common case is one statement:
/// a conditional update of the device's row (which locks it, so two servers holding
/// sessions of one device cannot both take a number).
pub(super) async fn take_send_seq(
    tx: &Tx<'_>,
    user: &str,
    device: &str,
    send_seq: u64,
) -> Result<(), StoreError> {
    let seq = send_seq as i64;
    let taken = execute(
        tx,
        "UPDATE devices SET send_seq = $3::bigint WHERE uid = $1 AND device = $2 AND send_seq = $3::bigint - 1",
        &[&user, &device, &seq],
    )
    .await?;
    if taken == 1 {
        return Ok(());
    }
    if send_seq == 1
        && execute(
            tx,
            "INSERT INTO devices (uid, device, send_seq) VALUES ($1, $2, 1) ON CONFLICT (uid, device) DO NOTHING",
            &[&user, &device],
        )
        .await?
            == 1
    {
        return Ok(());
    }
    Err(StoreError::OutOfOrder {
        expected: last_send_seq(tx, user, device).await? + 1,
    })
}
