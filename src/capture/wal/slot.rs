//! The replication slot and publication WAL capture reads through, and the position it has
//! queued up to (`webhook.capture_state`). Run by the capture worker only.

use crate::error::{Result, WebhookError};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// The publication listing the watched tables (SPEC §8). One per database.
pub const PUBLICATION: &str = "webhook_capture";

/// The slot of this database: slot names are cluster-wide, so it carries the database OID.
pub fn name() -> String {
    // SAFETY: a plain read of MyDatabaseId, set when the worker connected to its database.
    format!("webhook_{}", unsafe { pg_sys::MyDatabaseId }.to_u32())
}

/// An LSN as PostgreSQL writes it (`16/B374D848`).
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// What the slot holds and how far behind it is, from `pg_replication_slots`.
pub struct SlotState {
    pub lag_bytes: i64,
    pub wal_status: Option<String>,
}

/// The end of the last transaction whose changes are queued.
/// Whether the extension's tables are still there (DROP EXTENSION: the worker then drops the
/// slot).
pub(super) fn installed() -> Result<bool> {
    Ok(read_one::<bool>(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        "webhook.capture_state",
    )? == Some(true))
}

pub(super) fn applied_lsn(slot: &str) -> Result<u64> {
    let lsn = read_one::<i64>(
        "SELECT (applied_lsn OPERATOR(pg_catalog.-) '0/0'::pg_catalog.pg_lsn)::pg_catalog.int8
         FROM webhook.capture_state WHERE slot_name OPERATOR(pg_catalog.=) $1",
        slot,
    )?;
    lsn.map(|l| l as u64).ok_or_else(|| {
        WebhookError::Internal(format!("webhook.capture_state has no row for slot {slot}"))
    })
}

/// One value of a read-only query with one text argument. Reading the slot must not give the
/// transaction an id: its commit would write WAL, which the next read would then decode.
fn read_one<T: FromDatum + IntoDatum>(sql: &str, arg: &str) -> Result<Option<T>> {
    Spi::connect(|c| Ok(c.select(sql, None, &[arg.into()])?.first().get_one::<T>()?))
}

pub(super) fn record_applied(client: &mut SpiClient, slot: &str, lsn: u64) -> Result<()> {
    client.update(
        "UPDATE webhook.capture_state SET applied_lsn = $2::pg_catalog.pg_lsn, applied_at = pg_catalog.now()
         WHERE slot_name OPERATOR(pg_catalog.=) $1",
        None,
        &[slot.into(), lsn_text(lsn).into()],
    )?;
    Ok(())
}

/// Whether the slot exists (this reads no table of the extension's).
pub fn exists() -> Result<bool> {
    Ok(read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name OPERATOR(pg_catalog.=) $1)",
        &name(),
    )?
    .unwrap_or(false))
}

/// Whether `webhook.capture_state` remembers the slot (when it does not exist, it was lost).
pub fn remembered() -> Result<bool> {
    Ok(read_one::<bool>(
        "SELECT EXISTS (SELECT FROM webhook.capture_state WHERE slot_name OPERATOR(pg_catalog.=) $1)",
        &name(),
    )?
    .unwrap_or(false))
}

/// Create the slot (in a transaction that has written nothing: PostgreSQL requires it). It
/// waits for transactions running meanwhile to end.
pub fn create() -> Result<()> {
    // A read-only SPI call: a writing one would give the transaction an id first.
    Spi::connect(|c| {
        c.select(
            "SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput')",
            None,
            &[name().as_str().into()],
        )?;
        Ok(())
    })
}

/// Start reading where the slot starts (a new slot, or one that replaced a lost one).
pub fn remember() -> Result<()> {
    Spi::run_with_args(
        "INSERT INTO webhook.capture_state (slot_name, applied_lsn, applied_at)
         SELECT s.slot_name, s.confirmed_flush_lsn, pg_catalog.now() FROM pg_catalog.pg_replication_slots s
         WHERE s.slot_name OPERATOR(pg_catalog.=) $1
         ON CONFLICT (slot_name) DO UPDATE SET applied_lsn = excluded.applied_lsn, applied_at = excluded.applied_at",
        &[name().as_str().into()],
    )?;
    Ok(())
}

/// The publication exists (empty: `watch` adds tables to it).
pub fn ensure_publication() -> Result<()> {
    let exists = read_one::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_publication WHERE pubname OPERATOR(pg_catalog.=) $1)",
        PUBLICATION,
    )?
    .unwrap_or(false);
    if !exists {
        Spi::run(&format!(
            "CREATE PUBLICATION {PUBLICATION} WITH (publish = 'insert, update, delete')"
        ))?;
    }
    Ok(())
}

/// Drop the slot and the publication, whatever is left of them.
pub fn drop_all() -> Result<()> {
    Spi::run_with_args(
        "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots
         WHERE slot_name OPERATOR(pg_catalog.=) $1 AND NOT active",
        &[name().as_str().into()],
    )?;
    Spi::run(&format!("DROP PUBLICATION IF EXISTS {PUBLICATION}"))?;
    Ok(())
}

/// The slot's lag: WAL written since the position it has confirmed.
pub fn state() -> Result<Option<SlotState>> {
    Spi::connect(|c| {
        let rows = c.select(
            "SELECT (pg_catalog.pg_current_wal_lsn() OPERATOR(pg_catalog.-) confirmed_flush_lsn)::pg_catalog.int8 AS lag,
                    wal_status::pg_catalog.text AS wal_status
             FROM pg_catalog.pg_replication_slots WHERE slot_name OPERATOR(pg_catalog.=) $1",
            None,
            &[name().as_str().into()],
        )?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some(SlotState {
            lag_bytes: row.get_by_name::<i64, _>("lag")?.unwrap_or(0),
            wal_status: row.get_by_name("wal_status")?,
        }))
    })
}
