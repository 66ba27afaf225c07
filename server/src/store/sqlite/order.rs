//! The per-device send order: `devices.send_seq` is the last `ChatMessage.send_seq` the
//! server stored (or refused for good) from a device; the next one it takes is that + 1.
//! Checked and advanced inside the write that stores the message, so it is ordered with
//! every other write and survives restarts with the message itself.

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::tx::Tx;

/// The last send seq taken from `device` of `user` (0 if none).
pub(super) fn last_send_seq(
    conn: &Connection,
    user: &str,
    device: &str,
) -> Result<u64, StoreError> {
    let last: Option<i64> = conn
        .prepare_cached("SELECT send_seq FROM devices WHERE user = ?1 AND device = ?2")?
        .query_row(params![user, device], |r| r.get(0))
        .optional()?;
    Ok(last.unwrap_or(0) as u64)
}

/// Takes `send_seq` if it is the next one of the device, else
/// [`StoreError::OutOfOrder`] with the one expected.
pub(super) fn take_send_seq(
    tx: &Tx<'_>,
    user: &str,
    device: &str,
    send_seq: u64,
) -> Result<(), StoreError> {
    expect_send_seq(tx, user, device, send_seq)?;
    set_send_seq(tx, user, device, send_seq)
}

/// [`StoreError::OutOfOrder`] unless `send_seq` is the next one of the device; writes
/// nothing.
pub(super) fn expect_send_seq(
    tx: &Tx<'_>,
    user: &str,
    device: &str,
    send_seq: u64,
) -> Result<(), StoreError> {
    let expected = last_send_seq(tx, user, device)? + 1;
    if send_seq != expected {
        return Err(StoreError::OutOfOrder { expected });
    }
    Ok(())
}

/// Records `send_seq` as the device's last one taken (after [`expect_send_seq`]).
pub(super) fn set_send_seq(
    tx: &Tx<'_>,
    user: &str,
    device: &str,
    send_seq: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO devices (user, device, send_seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (user, device) DO UPDATE SET send_seq = excluded.send_seq",
    )?
    .execute(params![user, device, send_seq as i64])?;
    Ok(())
}
