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
