//! Subscriptions: watch and unwatch a table, the capture trigger they maintain, and the access
//! checks that keep a caller to tables it could read and attach triggers to itself.

use super::{endpoint_id, first_value, invalidate_capture_plans, required, string_list};
use crate::capture::table;
use crate::error::{OrRaise, Result, WebhookError};
use crate::subscription::Options;
use pgrx::prelude::*;
use pgrx::spi::{quote_literal, SpiClient};
use pgrx::{JsonB, PgRelation};

/// Tables an endpoint watches.
pub(super) fn watched_tables(client: &SpiClient, endpoint_id: i64) -> Result<Vec<pg_sys::Oid>> {
    let mut tables = Vec::new();
    for row in client.select(
        "SELECT relid::oid AS relid FROM webhook.subscription WHERE endpoint_id = $1",
        None,
        &[endpoint_id.into()],
    )? {
        tables.extend(row.get_by_name::<pg_sys::Oid, _>("relid")?);
    }
    Ok(tables)
}

/// The functions run as the extension owner; a caller may still only watch tables it could read
/// and attach triggers to itself.
fn require_table_rights(relid: pg_sys::Oid, table: &str) -> Result<()> {
    require_rights(
        relid,
        &[pg_sys::ACL_SELECT, pg_sys::ACL_TRIGGER],
        &format!("permission denied for table {table}: watch and unwatch need the SELECT and TRIGGER privileges on it"),
    )
}

/// `drop_endpoint(..., force => true)` rewrites triggers attached by hand: only on tables the
/// caller could attach triggers to itself.
pub(super) fn require_trigger_right(relid: pg_sys::Oid, table: &str) -> Result<()> {
    require_rights(
        relid,
        &[pg_sys::ACL_TRIGGER],
        &format!("permission denied for table {table}: removing an endpoint from its triggers needs the TRIGGER privilege on it"),
    )
}

fn require_rights(relid: pg_sys::Oid, modes: &[u32], denied: &str) -> Result<()> {
    // SAFETY: reads the session's outer user id, a plain global set at connection time.
    let caller = unsafe { pg_sys::GetOuterUserId() };
    for &mode in modes {
        // SAFETY: an ACL check of a relation the caller named as a regclass; an OID that no
        // longer exists makes PostgreSQL raise an ordinary ERROR.
        let verdict = unsafe { pg_sys::pg_class_aclcheck(relid, caller, mode as pg_sys::AclMode) };
        if verdict != pg_sys::AclResult::ACLCHECK_OK {
            return Err(WebhookError::PermissionDenied(denied.to_string()));
        }
    }
    Ok(())
}

/// The table's name as SQL would write it, or None when it no longer exists.
fn table_name(client: &SpiClient, relid: pg_sys::Oid) -> Result<Option<String>> {
    first_value(client.select(
        "SELECT c.oid::regclass::text FROM pg_catalog.pg_class c WHERE c.oid = $1",
        None,
        &[relid.into()],
    )?)
}

/// Make the table's `webhook_capture` trigger name exactly the endpoints subscribed to it.
pub(super) fn sync_trigger(client: &mut SpiClient, relid: pg_sys::Oid) -> Result<()> {
    // A table dropped meanwhile has no trigger left to maintain.
    let Some(table) = table_name(client, relid)? else {
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
    let exists = client
        .select(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = 'webhook_capture')",
            None,
            &[relid.into()],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if exists {
        client.update(
            &format!("DROP TRIGGER webhook_capture ON {table}"),
            None,
            &[],
        )?;
    }
    if !endpoints.is_empty() {
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
    }
    invalidate_capture_plans(relid);
    Ok(())
}

/// Subscribe an endpoint to a table's changes; returns the subscription id. Watching again
/// replaces the options.
#[allow(clippy::too_many_arguments)]
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn watch(
    tbl: Option<PgRelation>,
    endpoint: Option<&str>,
    events: default!(Option<Vec<Option<String>>>, "'{insert,update,delete}'"),
    columns: default!(Option<Vec<Option<String>>>, "NULL"),
    rename: default!(Option<JsonB>, "'{}'"),
    redact: default!(Option<Vec<Option<String>>>, "'{}'"),
    lookup: default!(Option<Vec<Option<String>>>, "NULL"),
    visibility_column: default!(Option<&str>, "NULL"),
    name: default!(Option<&str>, "NULL"),
    changed: default!(Option<Vec<Option<String>>>, "NULL"),
    predicate: default!(Option<&str>, "NULL"),
) -> i64 {
    let run = || -> Result<i64> {
        let relid = required(tbl, "tbl")?.oid();
        let endpoint = required(endpoint, "endpoint")?;
        if changed.is_some() || predicate.is_some() {
            return Err(WebhookError::NotSupported(
                "the changed and predicate options of watch() are planned but not supported yet"
                    .into(),
            ));
        }
        let options = Options {
            events: required(string_list(events, "events")?, "events")?,
            columns: string_list(columns, "columns")?,
            rename: required(rename, "rename")?.0,
            redact: required(string_list(redact, "redact")?, "redact")?,
            lookup: string_list(lookup, "lookup")?,
            visibility_column: visibility_column.map(str::to_string),
            name: name.map(str::to_string),
        };
        let table = table::load(relid)?;
        require_table_rights(relid, &table.qualified_name)?;
        let shape = options.resolve(&table)?;
        Spi::connect_mut(|client| {
            let endpoint_id = endpoint_id(client, endpoint)?;
            let id: i64 = client
                .update(
                    "INSERT INTO webhook.subscription
                        (endpoint_id, relid, name, events, columns, rename, redact, lookup, visibility_column)
                     VALUES ($1, $2::oid::regclass, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (relid, endpoint_id) DO UPDATE SET name = excluded.name,
                        events = excluded.events, columns = excluded.columns, rename = excluded.rename,
                        redact = excluded.redact, lookup = excluded.lookup,
                        visibility_column = excluded.visibility_column
                     RETURNING id",
                    None,
                    &[
                        endpoint_id.into(),
                        relid.into(),
                        options.name.clone().into(),
                        shape.events.to_list().into(),
                        options.columns.clone().into(),
                        JsonB(options.rename.clone()).into(),
                        options.redact.clone().into(),
                        options.lookup.clone().into(),
                        options.visibility_column.clone().into(),
                    ],
                )?
                .first()
                .get_one()?
                .ok_or_else(|| WebhookError::Internal("INSERT ... RETURNING id gave no id".into()))?;
            sync_trigger(client, relid)?;
            Ok(id)
        })
    };
    run().or_raise()
}

/// Stop sending a table's changes to an endpoint (deliveries already queued are still sent).
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn unwatch(tbl: Option<PgRelation>, endpoint: Option<&str>) {
    let run = || -> Result<()> {
        let relid = required(tbl, "tbl")?.oid();
        let endpoint = required(endpoint, "endpoint")?;
        require_table_rights(relid, &table::load(relid)?.qualified_name)?;
        Spi::connect_mut(|client| {
            let endpoint_id = endpoint_id(client, endpoint)?;
            let removed = client
                .update(
                    "DELETE FROM webhook.subscription WHERE relid::oid = $1 AND endpoint_id = $2 RETURNING id",
                    None,
                    &[relid.into(), endpoint_id.into()],
                )?;
            if removed.is_empty() {
                return Err(WebhookError::NotWatched {
                    table: table_name(client, relid)?.unwrap_or_else(|| relid.to_u32().to_string()),
                    endpoint: endpoint.to_string(),
                });
            }
            sync_trigger(client, relid)?;
            Ok(())
        })
    };
    run().or_raise()
}
