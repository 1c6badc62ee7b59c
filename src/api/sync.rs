//! Sync runs (SPEC §6): send the rows a table already holds through an endpoint's subscription.
//! The delivery worker reads them (`capture::sync`); these functions queue and cancel runs.

use super::subscriptions::require_table_rights;
use super::{endpoint_id, required};
use crate::capture::table;
use crate::error::{not_null, OrRaise, Result, WebhookError};
use crate::shmem;
use pgrx::prelude::*;
use pgrx::PgRelation;

/// Queue a sync run of `tbl` to `endpoint`, through that endpoint's subscription for the table;
/// returns the run id. The worker starts reading at once.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn sync(tbl: Option<PgRelation>, endpoint: Option<&str>) -> i64 {
    let run = || -> Result<i64> {
        let relid = required(tbl, "tbl")?.oid();
        let endpoint = required(endpoint, "endpoint")?;
        let table = table::load(relid)?;
        require_table_rights(relid, &table.qualified_name)?;
        if table.primary_key.is_empty() {
            return Err(WebhookError::NoKeyToSync(table.qualified_name.clone()));
        }
        let id = Spi::connect_mut(|client| -> Result<i64> {
            let endpoint_id = endpoint_id(client, endpoint)?;
            let subscription = client
                .select(
                    "SELECT id FROM webhook.subscription WHERE relid::oid = $1 AND endpoint_id = $2",
                    None,
                    &[relid.into(), endpoint_id.into()],
                )?
                .next()
                .map(|row| not_null::<i64>(&row, "id"))
                .transpose()?;
            let Some(subscription) = subscription else {
                return Err(WebhookError::NotWatched {
                    table: table.qualified_name.clone(),
                    endpoint: endpoint.to_string(),
                });
            };
            let active = client.update(
                "SELECT id FROM webhook.sync_run WHERE subscription_id = $1
                 AND status IN ('queued', 'reading') FOR UPDATE",
                None,
                &[subscription.into()],
            )?;
            if let Some(row) = active.into_iter().next() {
                let other: i64 = not_null(&row, "id")?;
                return Err(WebhookError::WrongState(format!(
                    "sync run {other} of table {} to endpoint \"{endpoint}\" is still reading; cancel it with webhook.cancel_sync({other}) or wait for it",
                    table.qualified_name
                )));
            }
            client
                .update(
                    "INSERT INTO webhook.sync_run (endpoint_id, subscription_id, relid, table_name)
                     VALUES ($1, $2, $3, $4) RETURNING id",
                    None,
                    &[
                        endpoint_id.into(),
                        subscription.into(),
                        relid.into(),
                        table.qualified_name.as_str().into(),
                    ],
                )?
                .first()
                .get_one::<i64>()?
                .ok_or_else(|| WebhookError::Internal("INSERT ... RETURNING id gave no id".into()))
        })?;
        shmem::wake_workers_at_commit();
        Ok(id)
    };
    run().or_raise()
}

/// Stop reading a sync run; what it already queued is still sent.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn cancel_sync(run: Option<i64>) {
    let cancel = || -> Result<()> {
        let run = required(run, "run")?;
        Spi::connect_mut(|client| {
            let found = client.update(
                "SELECT status, relid FROM webhook.sync_run WHERE id = $1 FOR UPDATE",
                None,
                &[run.into()],
            )?;
            let Some(row) = found.into_iter().next() else {
                return Err(WebhookError::UnknownSyncRun(run));
            };
            let status: String = not_null(&row, "status")?;
            if matches!(status.as_str(), "success" | "failed" | "cancelled") {
                return Err(WebhookError::WrongState(format!(
                    "sync run {run} has already finished ({status}); only a queued, reading or sending run can be cancelled"
                )));
            }
            let relid: pg_sys::Oid = not_null(&row, "relid")?;
            if let Ok(table) = table::load(relid) {
                require_table_rights(relid, &table.qualified_name)?;
            }
            client.update(
                "UPDATE webhook.sync_run SET status = 'cancelled', finished_at = now() WHERE id = $1",
                None,
                &[run.into()],
            )?;
            Ok(())
        })
    };
    cancel().or_raise()
}
