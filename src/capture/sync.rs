//! Sync runs (SPEC §6), the capture side: the rows a table already holds, rendered through one
//! subscription exactly as capture renders an insert, and queued in primary-key chunks. The
//! delivery worker drives it (`step`, between its claims), but the rows become payloads here,
//! beside the trigger's own code: the worker's sender side still only sends what is queued.
//!
//! Each chunk is one short transaction: its deliveries and the run's `after_key` commit together,
//! so a run stopped by anything (kill -9, an immediate shutdown) resumes after its last chunk, and
//! no transaction is held open over the whole table. A chunk that fails (the table dropped, a
//! predicate raising) fails its run, not the worker.

use super::payload::{self, Change, Meta, Op, Row};
use super::{rfc3339, stored_options, table};
use crate::endpoint::Format;
use crate::error::{not_null, Result, WebhookError};
use crate::{events, message};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, SpiClient};
use std::cell::Cell;
use std::time::{Duration, Instant};

const LOCK_ORDER_SQL: &str = "SELECT FROM webhook.endpoint, webhook.subscription, webhook.delivery,
    webhook.sync_run LIMIT 0";

/// How often finished runs are ended and their events queued.
const COUNT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    /// When the counts were last brought up to date, and whether a run was active and had
    /// events left to send then.
    static LAST_COUNT: Cell<Option<(Instant, bool, bool)>> = const { Cell::new(None) };
}

/// A run being read, as `next_run` finds it.
struct Run {
    id: i64,
    endpoint_id: i64,
    subscription_id: Option<i64>,
    relid: pg_sys::Oid,
    after_key: Option<Vec<Option<String>>>,
    /// The run's start, as census `sync_run_at` and every payload's `occurred_at`.
    started_at: String,
}

const NEXT_RUN_SQL: &str = "
UPDATE webhook.sync_run r
SET status = 'reading', started_at = coalesce(r.started_at, now()),
    rows_total = coalesce(r.rows_total, (SELECT CASE WHEN c.reltuples >= 0 THEN c.reltuples::int8 END
                                         FROM pg_catalog.pg_class c WHERE c.oid = r.relid))
WHERE r.id = (SELECT q.id FROM webhook.sync_run q WHERE q.status IN ('queued', 'reading')
              ORDER BY q.id LIMIT 1 FOR UPDATE SKIP LOCKED)
RETURNING r.id, r.endpoint_id, r.subscription_id, r.relid, r.after_key,
          (extract(epoch FROM r.started_at) * 1000000)::int8 - 946684800000000 AS started_us";

// A run still sending ends once every row it queued was delivered or dead-lettered: the
// worker's record statement counts them into rows_sent and rows_failed as their messages end.
const PROGRESS_SQL: &str = "
UPDATE webhook.sync_run r
SET status = CASE WHEN r.rows_failed > 0 THEN 'failed' ELSE 'success' END, finished_at = now()
WHERE r.status = 'sending' AND r.rows_sent + r.rows_failed >= r.rows_queued";

const ACTIVE_SQL: &str = "
SELECT EXISTS (SELECT FROM webhook.sync_run r WHERE r.status IN ('queued', 'reading', 'sending'))";

/// One step of the sync runs, in the caller's transaction: bring every active run's counts up
/// to date (ending the runs whose deliveries are all done), then read one chunk of at most
/// `chunk` rows of the oldest run still reading. Returns (a run may have rows left to read,
/// a run is still active).
pub fn step(chunk: i64) -> Result<(bool, bool)> {
    // Take the tables' locks first, in the order DROP EXTENSION takes them (creation order), so
    // that a DROP EXTENSION meanwhile waits for this step instead of deadlocking with it.
    Spi::run(LOCK_ORDER_SQL)?;
    // Once a second is enough to end runs and queue their events.
    let (active, events_due) = match LAST_COUNT.get() {
        Some((at, active, events_due)) if at.elapsed() < COUNT_EVERY => (active, events_due),
        _ => {
            let counted = (update_progress()?, send_events()?);
            LAST_COUNT.set(Some((Instant::now(), counted.0, counted.1)));
            counted
        }
    };
    let Some(run) = next_run()? else {
        return Ok((false, active || events_due));
    };
    match in_subtransaction(|| read_chunk(&run, chunk)) {
        Ok(more) => Ok((more, true)),
        Err(error) => {
            fail(run.id, &error)?;
            Ok((true, true))
        }
    }
}

/// End the runs whose rows are all delivered or dead-lettered; true while any run is active.
fn update_progress() -> Result<bool> {
    Spi::connect_mut(|client| {
        client.update(PROGRESS_SQL, None, &[])?;
        Ok(client
            .select(ACTIVE_SQL, None, &[])?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false))
    })
}

/// A run's next sync.* event: not yet, none (a step that does not apply), or this one.
enum Next {
    Wait,
    Skip,
    Send(&'static str),
}

/// The runs with sync.* events still to send, and what those events say.
const EVENTS_DUE_SQL: &str = "
SELECT r.id, r.status, r.events_sent, r.events_pending, r.rows_total, r.rows_sent, r.rows_failed,
       e.name AS endpoint, r.table_name,
       (extract(epoch FROM coalesce(r.finished_at, now()) - coalesce(r.started_at, r.triggered_at))
        * 1000)::int8 AS duration_ms,
       r.started_at IS NOT NULL AS started,
       NOT EXISTS (SELECT FROM webhook.delivery d WHERE d.id = ANY (r.events_pending)
                   AND d.status IN ('pending', 'delivering')) AS previous_done
FROM webhook.sync_run r JOIN webhook.endpoint e ON e.id = r.endpoint_id
WHERE r.events_sent < CASE WHEN r.status IN ('success', 'failed') THEN 4
                           WHEN r.status = 'cancelled' THEN 3 ELSE 2 END
ORDER BY r.id";

/// Queue each run's next sync.* event once the previous one's deliveries are all delivered or
/// dead-lettered (SPEC §6): triggered; started, once reading began; completed, once the run
/// ended; then success or failed (a cancelled run ends with completed). True while any run has
/// events left to send.
fn send_events() -> Result<bool> {
    Spi::connect_mut(|client| {
        let mut due = Vec::new();
        for row in client.update(EVENTS_DUE_SQL, None, &[])? {
            let id: i64 = not_null(&row, "id")?;
            let status: String = not_null(&row, "status")?;
            let sent: i32 = not_null(&row, "events_sent")?;
            let previous_done: bool = not_null(&row, "previous_done")?;
            let mut data = serde_json::json!({
                "run_id": id,
                "endpoint": not_null::<String>(&row, "endpoint")?,
                "table": not_null::<String>(&row, "table_name")?,
            });
            let started: bool = not_null(&row, "started")?;
            let event = match sent {
                0 => Next::Send(events::SYNC_TRIGGERED),
                // A run cancelled before it began reading never started: no sync.started.
                1 if status == "cancelled" && !started => Next::Skip,
                1 if status != "queued" => {
                    data["rows_total"] = row.get_by_name::<i64, _>("rows_total")?.into();
                    Next::Send(events::SYNC_STARTED)
                }
                2 | 3 if matches!(status.as_str(), "success" | "failed" | "cancelled") => {
                    data["rows_total"] = row.get_by_name::<i64, _>("rows_total")?.into();
                    data["status"] = status.clone().into();
                    data["rows_sent"] = not_null::<i64>(&row, "rows_sent")?.into();
                    data["rows_failed"] = not_null::<i64>(&row, "rows_failed")?.into();
                    data["duration_ms"] = not_null::<i64>(&row, "duration_ms")?.into();
                    Next::Send(match (sent, status.as_str()) {
                        (2, _) => events::SYNC_COMPLETED,
                        (_, "success") => events::SYNC_SUCCESS,
                        _ => events::SYNC_FAILED,
                    })
                }
                _ => Next::Wait,
            };
            due.push((id, previous_done, event, data));
        }
        let any = !due.is_empty();
        for (id, previous_done, event, data) in due {
            let ids = match event {
                _ if !previous_done => continue,
                Next::Wait => continue,
                Next::Skip => Vec::new(),
                Next::Send(event) => events::emit(client, event, data, None)?,
            };
            client.update(
                "UPDATE webhook.sync_run SET events_sent = events_sent + 1, events_pending = $2
                 WHERE id = $1",
                None,
                &[id.into(), ids.into()],
            )?;
        }
        Ok(any)
    })
}

fn next_run() -> Result<Option<Run>> {
    Spi::connect_mut(|client| {
        let rows = client.update(NEXT_RUN_SQL, None, &[])?;
        let Some(row) = rows.into_iter().next() else {
            return Ok(None);
        };
        Ok(Some(Run {
            id: not_null(&row, "id")?,
            endpoint_id: not_null(&row, "endpoint_id")?,
            subscription_id: row.get_by_name("subscription_id")?,
            relid: not_null(&row, "relid")?,
            after_key: row.get_by_name("after_key")?,
            started_at: rfc3339(not_null(&row, "started_us")?),
        }))
    })
}

fn fail(run: i64, error: &str) -> Result<()> {
    Spi::connect_mut(|client| {
        client.update(
            "UPDATE webhook.sync_run SET status = 'failed', error = $2, finished_at = now()
             WHERE id = $1",
            None,
            &[run.into(), error.into()],
        )?;
        Ok(())
    })
}

/// Run `f` in a subtransaction: an error it raises rolls back what it did and comes back as its
/// message, as PL/pgSQL's EXCEPTION blocks do, instead of ending the worker.
pub(crate) fn in_subtransaction<R>(
    f: impl FnOnce() -> Result<R>,
) -> std::result::Result<R, String> {
    // SAFETY: the memory context and resource owner current before the subtransaction, restored
    // after it ends either way (as PL/pgSQL does around an exception block).
    let (context, owner) = unsafe { (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner) };
    // SAFETY: called inside the worker's transaction; ended below on every path.
    unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };
    let restore = move || {
        // SAFETY: puts back the context and owner saved above; the subtransaction has ended.
        unsafe {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
    };
    // The closure's captures are not used again after an error: the run is failed instead.
    let f = std::panic::AssertUnwindSafe(f);
    PgTryBuilder::new(move || {
        let f = f;
        let result = (f.0)();
        match result {
            Ok(value) => {
                // SAFETY: ends the subtransaction begun above, keeping its work.
                unsafe { pg_sys::ReleaseCurrentSubTransaction() };
                restore();
                Ok(value)
            }
            Err(e) => {
                // SAFETY: ends the subtransaction begun above, undoing its work.
                unsafe { pg_sys::RollbackAndReleaseCurrentSubTransaction() };
                restore();
                Err(e.to_string())
            }
        }
    })
    .catch_others(|caught| {
        // SAFETY: the error was caught (and its state flushed) by PgTryBuilder; undo the
        // subtransaction's work as PL/pgSQL does after catching.
        unsafe { pg_sys::RollbackAndReleaseCurrentSubTransaction() };
        restore();
        Err(match caught {
            pg_sys::panic::CaughtError::PostgresError(r)
            | pg_sys::panic::CaughtError::ErrorReport(r)
            | pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => r.message().to_string(),
        })
    })
    .execute()
}

/// The subscription's options resolved against the table, with the endpoint's format and name.
struct Target {
    shape: crate::subscription::Shape,
    table: crate::subscription::TableShape,
    format: Format,
    endpoint_name: String,
    predicate: Option<String>,
}

fn target(client: &SpiClient, run: &Run) -> Result<Target> {
    let Some(subscription_id) = run.subscription_id else {
        return Err(WebhookError::WrongState(
            "the subscription was removed (unwatch) during the run".into(),
        ));
    };
    let exists = client
        .select(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_class WHERE oid = $1)",
            None,
            &[run.relid.into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if !exists {
        return Err(WebhookError::WrongState(
            "the table was dropped during the run".into(),
        ));
    }
    let table = table::load(run.relid)?;
    let found = client.select(
        "SELECT s.id AS subscription_id, s.events, s.columns, s.rename::text AS rename, s.redact,
                s.lookup, s.visibility_column, s.name, s.behavior, s.changed, s.predicate,
                e.format, e.name AS endpoint_name
         FROM webhook.subscription s JOIN webhook.endpoint e ON e.id = s.endpoint_id
         WHERE s.id = $1",
        None,
        &[subscription_id.into()],
    )?;
    let Some(row) = found.into_iter().next() else {
        return Err(WebhookError::WrongState(
            "the subscription was removed (unwatch) during the run".into(),
        ));
    };
    let shape = stored_options(&row)?.resolve(&table)?;
    let format: String = not_null(&row, "format")?;
    Ok(Target {
        shape,
        table,
        format: Format::parse(&format)?,
        endpoint_name: not_null(&row, "endpoint_name")?,
        predicate: row.get_by_name("predicate")?,
    })
}

/// The chunk query: the next `chunk` rows after `after_key` in primary-key order, each as
/// `to_jsonb` text with its key, the subscription's predicate applied (it was checked by
/// `watch`, and is parsed here as there, with search_path = pg_catalog).
fn chunk_sql(
    client: &SpiClient,
    run: &Run,
    target: &Target,
    chunk: i64,
) -> Result<(String, Vec<String>)> {
    let key = &target.table.primary_key;
    if key.is_empty() {
        return Err(WebhookError::WrongState(format!(
            "table {} no longer has a primary key",
            target.table.qualified_name
        )));
    }
    let mut types = Vec::new();
    for column in key {
        let found = client.select(
            "SELECT pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
             WHERE attrelid = $1 AND attname = $2 AND NOT attisdropped",
            None,
            &[run.relid.into(), column.as_str().into()],
        )?;
        types.push(
            found
                .first()
                .get_one::<String>()?
                .ok_or_else(|| WebhookError::Internal(format!("key column {column} missing")))?,
        );
    }
    let relation: String = client
        .select(
            "SELECT $1::pg_catalog.regclass::pg_catalog.text",
            None,
            &[run.relid.into()],
        )?
        .first()
        .get_one()?
        .ok_or_else(|| WebhookError::Internal("table name".into()))?;
    let columns: Vec<String> = key
        .iter()
        .map(|c| format!("t.{}", quote_identifier(c)))
        .collect();
    let key_text = columns
        .iter()
        .map(|c| format!("{c}::pg_catalog.text"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut conditions = Vec::new();
    if run.after_key.is_some() {
        let after = types
            .iter()
            .enumerate()
            .map(|(i, t)| format!("$1[{}]::{t}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        conditions.push(format!("ROW({}) > ROW({after})", columns.join(", ")));
    }
    if let Some(predicate) = &target.predicate {
        conditions.push(format!("({predicate})"));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT pg_catalog.to_jsonb(t)::pg_catalog.text AS row, ARRAY[{key_text}] AS key
         FROM ONLY {relation} t {filter} ORDER BY {} LIMIT {chunk}",
        columns.join(", ")
    );
    Ok((sql, types))
}

/// Queue the run's next chunk; true when the chunk was full (more may follow).
fn read_chunk(run: &Run, chunk: i64) -> Result<bool> {
    // The predicate and the key types resolve in pg_catalog only, as `watch` parsed them.
    Spi::run("SET LOCAL search_path = pg_catalog, pg_temp")?;
    Spi::connect_mut(|client| {
        let target = target(client, run)?;
        let (sql, _) = chunk_sql(client, run, &target, chunk)?;
        let after: Vec<Option<String>> = run.after_key.clone().unwrap_or_default();
        let rows = if run.after_key.is_some() {
            client.select(&sql, None, &[after.into()])?
        } else {
            client.select(&sql, None, &[])?
        };
        let mut payloads: Vec<String> = Vec::new();
        let mut ids: Vec<Option<String>> = Vec::new();
        let mut last_key: Option<Vec<Option<String>>> = None;
        for row in rows {
            let json: String = not_null(&row, "row")?;
            last_key = row.get_by_name("key")?;
            let new = Row::parse(&json)
                .map_err(|e| WebhookError::Internal(format!("to_jsonb gave no object: {e}")))?;
            let change = Change {
                op: Op::Insert,
                old: None,
                new: Some(&new),
            };
            let id = match target.format {
                Format::Rownd => Some(message::new_id()),
                Format::Census => None,
            };
            let meta = Meta {
                id: id.as_deref().unwrap_or_default(),
                occurred_at: &run.started_at,
                sync_run_id: Some(run.id),
            };
            payloads.push(match target.format {
                Format::Rownd => payload::rownd(&target.shape, &target.table, &change, &meta),
                Format::Census => payload::census(
                    &target.shape,
                    &target.table,
                    &change,
                    &meta,
                    &target.endpoint_name,
                    run.subscription_id,
                ),
            });
            ids.push(id);
        }
        let read = payloads.len() as i64;
        if read > 0 {
            client.update(
                "INSERT INTO webhook.delivery
                    (endpoint_id, subscription_id, table_name, operation, payload, message_id, sync_run_id)
                 SELECT $1, $2, $3, 'data_insert', u.payload, u.message_id, $4
                 FROM unnest($5::text[], $6::text[]) WITH ORDINALITY AS u(payload, message_id, n)
                 ORDER BY u.n",
                None,
                &[
                    run.endpoint_id.into(),
                    run.subscription_id.into(),
                    target.table.qualified_name.as_str().into(),
                    run.id.into(),
                    payloads.into(),
                    ids.into(),
                ],
            )?;
        }
        let more = read == chunk;
        client.update(
            "UPDATE webhook.sync_run SET rows_queued = rows_queued + $2,
                    after_key = coalesce($3, after_key),
                    status = CASE WHEN $4 THEN status ELSE 'sending' END
             WHERE id = $1",
            None,
            &[run.id.into(), read.into(), last_key.into(), more.into()],
        )?;
        Ok(more)
    })
}
