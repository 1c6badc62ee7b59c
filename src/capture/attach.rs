//! How a watched table is captured, kept in line with its subscriptions and the capture mode
//! (SPEC §8): in trigger mode, one `webhook_capture` trigger naming the subscribed endpoints; in
//! WAL mode, no trigger, the table in the publication, `REPLICA IDENTITY FULL`, and each
//! subscription's WAL range. `watch`, `unwatch` and `drop_endpoint` call `sync` in their
//! transaction; the first worker calls it at start to move tables from one mode to the other.
//!
//! A switch happens under `SHARE ROW EXCLUSIVE`, the lock CREATE TRIGGER takes: writers that
//! held the table before it committed, and were captured the old way; the WAL position read
//! once the lock is held separates their changes from the ones captured the new way.

use crate::capture::wal::slot;
use crate::error::{Result, WebhookError};
use crate::guc::{self, Capture};
use pgrx::prelude::*;
use pgrx::spi::{quote_literal, SpiClient};
use std::time::{Duration, Instant};

/// How long `watch` waits for the worker to create the replication slot (it does so within a
/// second of CREATE EXTENSION).
const SLOT_WAIT: Duration = Duration::from_secs(10);

fn first_bool(client: &SpiClient, sql: &str, relid: pg_sys::Oid) -> Result<bool> {
    Ok(client
        .select(sql, None, &[relid.into()])?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false))
}

/// Make the table's capture match its subscriptions, in the configured mode.
pub fn sync(client: &mut SpiClient, relid: pg_sys::Oid) -> Result<()> {
    sync_in(client, relid, guc::capture())
}

fn sync_in(client: &mut SpiClient, relid: pg_sys::Oid, mode: Capture) -> Result<()> {
    // A table dropped meanwhile has nothing left to maintain.
    let Some(table) = client
        .select(
            "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c WHERE c.oid = $1",
            None,
            &[relid.into()],
        )?
        .first()
        .get_one::<String>()?
    else {
        return Ok(());
    };
    let mut endpoints: Vec<String> = Vec::new();
    for row in client.select(
        "SELECT e.name FROM webhook.subscription s JOIN webhook.endpoint e ON e.id = s.endpoint_id
         WHERE s.relid::oid = $1 ORDER BY e.name",
        None,
        &[relid.into()],
    )? {
        endpoints.extend(row.get_by_name::<String, _>("name")?);
    }
    match mode {
        Capture::Trigger => by_trigger(client, relid, &table, &endpoints)?,
        Capture::Wal => by_wal(client, relid, &table, !endpoints.is_empty())?,
    }
    // SAFETY: called inside the caller's transaction, which the invalidation is queued in and
    // sent at commit; the relation exists (looked up above).
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
    Ok(())
}

fn by_trigger(
    client: &mut SpiClient,
    relid: pg_sys::Oid,
    table: &str,
    endpoints: &[String],
) -> Result<()> {
    let exists = first_bool(
        client,
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = 'webhook_capture')",
        relid,
    )?;
    if exists {
        client.update(
            &format!("DROP TRIGGER webhook_capture ON {table}"),
            None,
            &[],
        )?;
    }
    if endpoints.is_empty() {
        return Ok(());
    }
    let args = endpoints
        .iter()
        .map(quote_literal)
        .collect::<Vec<_>>()
        .join(", ");
    client.update(
        &format!(
            "CREATE TRIGGER webhook_capture AFTER INSERT OR UPDATE OR DELETE ON {table}
             FOR EACH ROW EXECUTE FUNCTION webhook.capture({args})"
        ),
        None,
        &[],
    )?;
    // Subscriptions that were read from the WAL until now: the trigger takes over from here
    // (the worker reads the slot up to this point, then drops it). Schemas before 0.3.0 had
    // no WAL capture.
    if !crate::schema::has_wal_ranges()? {
        return Ok(());
    }
    client.update(
        "UPDATE webhook.subscription SET wal_until = pg_current_wal_insert_lsn()
         WHERE relid::oid = $1 AND wal_from IS NOT NULL AND wal_until IS NULL",
        None,
        &[relid.into()],
    )?;
    Ok(())
}

/// In WAL mode, what `watch` needs before it writes anything: wal_level = logical and the
/// replication slot (waited for a little: see `wait_for_slot`).
pub fn ready_to_watch() -> Result<()> {
    if guc::capture() != Capture::Wal {
        return Ok(());
    }
    Spi::connect(|client| {
        check_wal_level(client)?;
        wait_for_slot(client)
    })
}

fn check_wal_level(client: &SpiClient) -> Result<()> {
    let wal_level = client
        .select("SELECT current_setting('wal_level')", None, &[])?
        .first()
        .get_one::<String>()?
        .unwrap_or_default();
    if wal_level != "logical" {
        return Err(WebhookError::WrongState(format!(
            "webhook.capture = 'wal' needs wal_level = logical, and wal_level is {wal_level}: set wal_level = logical in postgresql.conf and restart the server (or set webhook.capture = 'trigger')"
        )));
    }
    Ok(())
}

fn by_wal(client: &mut SpiClient, relid: pg_sys::Oid, table: &str, watched: bool) -> Result<()> {
    check_wal_level(client)?;
    client.update(
        &format!("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"),
        None,
        &[],
    )?;
    let has_trigger = first_bool(
        client,
        "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = 'webhook_capture')",
        relid,
    )?;
    if has_trigger {
        client.update(
            &format!("DROP TRIGGER webhook_capture ON {table}"),
            None,
            &[],
        )?;
    }
    let published = first_bool(
        client,
        "SELECT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid
                        WHERE p.pubname = 'webhook_capture' AND r.prrelid = $1)",
        relid,
    )?;
    if !watched {
        if published {
            client.update(
                &format!("ALTER PUBLICATION {} DROP TABLE {table}", slot::PUBLICATION),
                None,
                &[],
            )?;
        }
        return Ok(());
    }
    if !slot_exists(client)? {
        return Err(slot_missing());
    }
    if !published {
        client.update(
            &format!("ALTER PUBLICATION {} ADD TABLE {table}", slot::PUBLICATION),
            None,
            &[],
        )?;
    }
    let full = first_bool(
        client,
        "SELECT relreplident = 'f' FROM pg_class WHERE oid = $1",
        relid,
    )?;
    if !full {
        client.update(
            &format!("ALTER TABLE {table} REPLICA IDENTITY FULL"),
            None,
            &[],
        )?;
        notice!(
            "webhook: set REPLICA IDENTITY FULL on table {table}, so that the WAL carries the old row of its updates and deletes (webhook.capture = 'wal')"
        );
    }
    client.update(
        "UPDATE webhook.subscription SET wal_from = pg_current_wal_insert_lsn(), wal_until = NULL
         WHERE relid::oid = $1 AND (wal_from IS NULL OR wal_until IS NOT NULL)",
        None,
        &[relid.into()],
    )?;
    Ok(())
}

/// The slot must exist before a subscription reads from it: changes made before it was created
/// are not in it. The worker creates it within a second of CREATE EXTENSION; wait that long,
/// unless this transaction has written already (the slot's creation would wait for it).
fn wait_for_slot(client: &SpiClient) -> Result<()> {
    let started = Instant::now();
    loop {
        if slot_exists(client)? {
            return Ok(());
        }
        // SAFETY: reads this backend's transaction state.
        let has_xid = unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::InvalidTransactionId;
        if has_xid || started.elapsed() >= SLOT_WAIT {
            return Err(slot_missing());
        }
        crate::shmem::wake_workers_now();
        std::thread::sleep(Duration::from_millis(50));
        pgrx::check_for_interrupts!();
    }
}

fn slot_exists(client: &SpiClient) -> Result<bool> {
    Ok(client
        .select(
            // The worker creates the publication first, then the slot.
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_replication_slots WHERE slot_name = $1)",
            None,
            &[slot::name().as_str().into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false))
}

fn slot_missing() -> WebhookError {
    WebhookError::WrongState(format!(
        "the WAL capture's replication slot {} does not exist yet: the delivery worker creates it when it starts (is webhook in shared_preload_libraries and the worker running?); call watch in a transaction of its own, or again in a moment",
        slot::name()
    ))
}
