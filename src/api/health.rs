//! The delivery workers' health, as `webhook.workers` shows it (from shared memory).

use crate::{guc, shmem};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

type WorkerRow = (
    i32,
    Option<String>,
    Option<TimestampWithTimeZone>,
    Option<TimestampWithTimeZone>,
    i32,
    Option<String>,
);

/// One row per running delivery worker; read by the view `webhook.workers`. Nothing when the
/// library is not preloaded (no worker runs then).
#[allow(clippy::type_complexity)] // pgrx reads the column names from this signature
#[pg_extern(name = "_workers", security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn workers() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(database, Option<String>),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(last_loop_at, Option<TimestampWithTimeZone>),
        name!(in_flight, i32),
        name!(last_error, Option<String>),
    ),
> {
    let rows: Vec<WorkerRow> = shmem::workers()
        .into_iter()
        .map(|h| {
            (
                h.pid,
                Some(guc::database()),
                TimestampWithTimeZone::try_from(h.started_at).ok(),
                TimestampWithTimeZone::try_from(h.last_loop_at).ok(),
                h.in_flight,
                h.last_error(),
            )
        })
        .collect();
    TableIterator::new(rows)
}

type CaptureLagRow = (
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    i64,
    i64,
    bool,
);

/// WAL capture's slot and how far behind it is (SPEC §8); read by the view
/// `webhook.capture_lag`. No row without the slot (trigger mode).
#[allow(clippy::type_complexity)] // pgrx reads the column names from this signature
#[pg_extern(name = "_capture_lag", security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn capture_lag() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(mode, String),
        name!(wal_status, Option<String>),
        name!(lag_bytes, i64),
        name!(lag_ms, Option<i64>),
        name!(retained_bytes, i64),
        name!(alert_bytes, i64),
        name!(raised, bool),
    ),
> {
    let run = || -> crate::error::Result<Vec<CaptureLagRow>> {
        let slot = crate::capture::wal::slot::name();
        let row = Spi::connect(|c| {
            let rows = c.select(
                "SELECT wal_status::text AS wal_status,
                    coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::int8, 0) AS lag,
                    coalesce((pg_current_wal_lsn() - restart_lsn)::int8, 0) AS retained
                 FROM pg_replication_slots WHERE slot_name = $1",
                None,
                &[slot.as_str().into()],
            )?;
            let Some(r) = rows.into_iter().next() else {
                return Ok::<_, crate::error::WebhookError>(None);
            };
            Ok(Some((
                r.get_by_name::<String, _>("wal_status")?,
                r.get_by_name::<i64, _>("lag")?.unwrap_or(0),
                r.get_by_name::<i64, _>("retained")?.unwrap_or(0),
            )))
        })?;
        let Some((wal_status, lag_bytes, retained_bytes)) = row else {
            return Ok(Vec::new());
        };
        let mode = match guc::capture() {
            guc::Capture::Trigger => "trigger",
            guc::Capture::Wal => "wal",
        };
        Ok(vec![(
            slot,
            mode.to_string(),
            wal_status,
            lag_bytes,
            crate::capture::wal::lag_ms(),
            retained_bytes,
            guc::capture_lag_alert_bytes(),
            shmem::capture_lag_raised(None),
        )])
    };
    TableIterator::new(crate::error::OrRaise::or_raise(run()))
}
