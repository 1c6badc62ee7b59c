//! Subscriptions: watch and unwatch a table, the capture trigger they maintain, and the access
//! checks that keep a caller to tables it could read and attach triggers to itself.

use super::{endpoint_id, first_value, required, string_list};
use crate::capture::{attach, predicate, table};
use crate::error::{not_null, OrRaise, Result, WebhookError};
use crate::subscription::Options;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
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
pub(super) fn require_table_rights(relid: pg_sys::Oid, table: &str) -> Result<()> {
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

/// The columns a subscription names, option by option, with the attribute number and type
/// each had when `watch` stored it: the DDL guard (`check_subscriptions`) refuses DDL that
/// drops, renames or retypes any of them.
fn guard(
    client: &SpiClient,
    relid: pg_sys::Oid,
    options: &Options,
    primary_key: &[String],
    predicate_columns: &[String],
) -> Result<serde_json::Value> {
    let mut named: Vec<(String, &'static str)> = Vec::new();
    let mut add = |option: &'static str, cols: &[String]| {
        named.extend(cols.iter().map(|c| (c.clone(), option)));
    };
    add("columns", options.columns.as_deref().unwrap_or_default());
    if let serde_json::Value::Object(map) = &options.rename {
        add("rename", &map.keys().cloned().collect::<Vec<_>>());
    }
    add("redact", &options.redact);
    match &options.lookup {
        Some(cols) => add("lookup", cols),
        None => add("lookup (the primary key)", primary_key),
    }
    add("visibility_column", options.visibility_column.as_slice());
    add("changed", options.changed.as_deref().unwrap_or_default());
    add("predicate", predicate_columns);
    let mut entries: Vec<serde_json::Value> = Vec::new();
    for (column, option) in named {
        if let Some(e) = entries.iter_mut().find(|e| e["column"] == column.as_str()) {
            let list = e["options"]
                .as_array_mut()
                .expect("built below as an array");
            if !list.iter().any(|o| o == option) {
                list.push(option.into());
            }
            continue;
        }
        let found = client.select(
            "SELECT attnum::int4 AS attnum, atttypid::oid::int8 AS type FROM pg_catalog.pg_attribute
             WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
            None,
            &[relid.into(), column.as_str().into()],
        )?;
        let Some(row) = found.into_iter().next() else {
            continue;
        };
        let attnum: i32 = not_null(&row, "attnum")?;
        let type_oid: i64 = not_null(&row, "type")?;
        entries.push(serde_json::json!({
            "column": column, "attnum": attnum, "type": type_oid, "options": [option]
        }));
    }
    Ok(serde_json::Value::Array(entries))
}

/// Subscribe an endpoint to a table's changes; returns the subscription id. Watching again
/// replaces the options. (The Rust name differs from the SQL name so that `watch_wrapper`, the
/// symbol of the 11-argument `watch` of 0.1.0 and 0.2.0, keeps working between a package
/// upgrade and `ALTER EXTENSION webhook UPDATE`: see `watch` below.)
#[allow(clippy::too_many_arguments)]
#[pg_extern(security_definer, volatile, name = "watch")]
#[search_path(pg_catalog, pg_temp)]
fn subscribe(
    tbl: Option<PgRelation>,
    endpoint: Option<&str>,
    events: default!(Option<Vec<Option<String>>>, "NULL"),
    columns: default!(Option<Vec<Option<String>>>, "NULL"),
    rename: default!(Option<JsonB>, "'{}'"),
    redact: default!(Option<Vec<Option<String>>>, "'{}'"),
    lookup: default!(Option<Vec<Option<String>>>, "NULL"),
    visibility_column: default!(Option<&str>, "NULL"),
    name: default!(Option<&str>, "NULL"),
    changed: default!(Option<Vec<Option<String>>>, "NULL"),
    predicate: default!(Option<&str>, "NULL"),
    behavior: default!(Option<&str>, "NULL"),
) -> i64 {
    let args = WatchArgs {
        tbl,
        endpoint,
        events,
        columns,
        rename,
        redact,
        lookup,
        visibility_column,
        name,
        changed,
        predicate,
        behavior,
    };
    watch_with(args, false).or_raise()
}

/// `watch`'s arguments, as SQL passed them.
struct WatchArgs<'a> {
    tbl: Option<PgRelation>,
    endpoint: Option<&'a str>,
    events: Option<Vec<Option<String>>>,
    columns: Option<Vec<Option<String>>>,
    rename: Option<JsonB>,
    redact: Option<Vec<Option<String>>>,
    lookup: Option<Vec<Option<String>>>,
    visibility_column: Option<&'a str>,
    name: Option<&'a str>,
    changed: Option<Vec<Option<String>>>,
    predicate: Option<&'a str>,
    behavior: Option<&'a str>,
}

/// The INSERT of a 0.1.0 / 0.2.0 schema, whose subscription table has no filter columns.
const INSERT_BEFORE_0_3: &str = "INSERT INTO webhook.subscription
        (endpoint_id, relid, name, events, columns, rename, redact, lookup, visibility_column)
     VALUES ($1, $2::oid::regclass, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (relid, endpoint_id) DO UPDATE SET name = excluded.name,
        events = excluded.events, columns = excluded.columns, rename = excluded.rename,
        redact = excluded.redact, lookup = excluded.lookup,
        visibility_column = excluded.visibility_column
     RETURNING id";

/// `old_schema`: the installed schema is 0.1.0 or 0.2.0 (the package was upgraded, `ALTER
/// EXTENSION webhook UPDATE` not run yet); only the options it can store are accepted.
fn watch_with(a: WatchArgs, old_schema: bool) -> Result<i64> {
    let WatchArgs {
        tbl,
        endpoint,
        events,
        columns,
        rename,
        redact,
        lookup,
        visibility_column,
        name,
        changed,
        predicate,
        behavior,
    } = a;
    if old_schema && (changed.is_some() || predicate.is_some() || behavior.is_some()) {
        return Err(WebhookError::WrongState(
            "the changed, predicate and behavior options need the 0.3.0 schema: run ALTER EXTENSION webhook UPDATE".into(),
        ));
    }
    let run = || -> Result<i64> {
        let relid = required(tbl, "tbl")?.oid();
        let endpoint = required(endpoint, "endpoint")?;
        let options = Options {
            events: string_list(events, "events")?,
            behavior: behavior.map(str::to_string),
            changed: string_list(changed, "changed")?,
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
        attach::ready_to_watch()?;
        // SAFETY: reads the session's outer user id, a plain global set at connection time.
        let caller = unsafe { pg_sys::GetOuterUserId() };
        let analysed = match predicate {
            Some(text) => {
                // Names in the predicate resolve in pg_catalog only (SPEC §5); the function's
                // own setting comes back when it returns.
                Spi::run("SET LOCAL search_path = pg_catalog")?;
                Some(predicate::analyse(relid, text, caller)?)
            }
            None => None,
        };
        Spi::connect_mut(|client| {
            let endpoint_id = endpoint_id(client, endpoint)?;
            if old_schema {
                let id: i64 = client
                    .update(
                        INSERT_BEFORE_0_3,
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
                    .ok_or_else(|| {
                        WebhookError::Internal("INSERT ... RETURNING id gave no id".into())
                    })?;
                attach::sync(client, relid)?;
                return Ok(id);
            }
            let predicate_columns = analysed.as_ref().map(|a| a.columns.as_slice());
            let guard = guard(
                client,
                relid,
                &options,
                &table.primary_key,
                predicate_columns.unwrap_or_default(),
            )?;
            let id: i64 = client
                .update(
                    "INSERT INTO webhook.subscription
                        (endpoint_id, relid, name, events, columns, rename, redact, lookup, visibility_column,
                         behavior, changed, predicate, predicate_node, guard)
                     VALUES ($1, $2::oid::regclass, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                     ON CONFLICT (relid, endpoint_id) DO UPDATE SET name = excluded.name,
                        events = excluded.events, columns = excluded.columns, rename = excluded.rename,
                        redact = excluded.redact, lookup = excluded.lookup,
                        visibility_column = excluded.visibility_column, behavior = excluded.behavior,
                        changed = excluded.changed, predicate = excluded.predicate,
                        predicate_node = excluded.predicate_node, guard = excluded.guard
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
                        options.behavior.clone().into(),
                        options.changed.clone().into(),
                        predicate.into(),
                        analysed.as_ref().map(|a| a.node.clone()).into(),
                        JsonB(guard).into(),
                    ],
                )?
                .first()
                .get_one()?
                .ok_or_else(|| WebhookError::Internal("INSERT ... RETURNING id gave no id".into()))?;
            attach::sync(client, relid)?;
            Ok(id)
        })
    };
    run()
}

/// `watch` as 0.1.0 and 0.2.0 declared it (no `behavior`), for their SQL definitions until
/// `ALTER EXTENSION webhook UPDATE` replaces them. No SQL of this version refers to it.
#[allow(clippy::too_many_arguments)]
#[pg_extern(sql = false)]
fn watch(
    tbl: Option<PgRelation>,
    endpoint: Option<&str>,
    events: Option<Vec<Option<String>>>,
    columns: Option<Vec<Option<String>>>,
    rename: Option<JsonB>,
    redact: Option<Vec<Option<String>>>,
    lookup: Option<Vec<Option<String>>>,
    visibility_column: Option<&str>,
    name: Option<&str>,
    changed: Option<Vec<Option<String>>>,
    predicate: Option<&str>,
) -> i64 {
    let args = WatchArgs {
        tbl,
        endpoint,
        events,
        columns,
        rename,
        redact,
        lookup,
        visibility_column,
        name,
        changed,
        predicate,
        behavior: None,
    };
    let run = || -> Result<i64> {
        let (_, version) = crate::capture::extension()?;
        watch_with(args, crate::schema::before_0_3(&version))
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
            attach::sync(client, relid)?;
            Ok(())
        })
    };
    run().or_raise()
}

/// The DDL guard's part for WAL capture: tables captured from the WAL keep REPLICA IDENTITY FULL.
fn require_full_identity(client: &SpiClient, tables: &[pg_sys::Oid]) -> Result<()> {
    let lost_identity = client.select(
        "SELECT c.oid::regclass::text AS table FROM pg_catalog.pg_class c
         WHERE c.oid = ANY ($1) AND c.relreplident <> 'f'
           AND EXISTS (SELECT FROM webhook.subscription s
                       WHERE s.relid::oid = c.oid AND s.wal_from IS NOT NULL AND s.wal_until IS NULL)",
        None,
        &[tables.to_vec().into()],
    )?;
    if let Some(row) = lost_identity.into_iter().next() {
        let table: String = not_null(&row, "table")?;
        return Err(WebhookError::InUse(format!(
            "cannot change the replica identity of table {table}: it is captured from the WAL (webhook.capture = 'wal'), which needs REPLICA IDENTITY FULL to send the old row of updates and deletes; unwatch it first"
        )));
    }
    Ok(())
}

/// The DDL guard (SPEC §5), called by the event triggers at the end of ALTER TABLE and when
/// columns are dropped: refuse the DDL if a subscription of one of `tables` names a column it
/// dropped, renamed or retyped, or no longer fits the table at all (its primary key gone).
/// Internal: the event triggers' functions call it.
#[pg_extern(security_definer, volatile, name = "_check_subscriptions")]
#[search_path(pg_catalog, pg_temp)]
fn check_subscriptions(tables: Option<Vec<Option<pg_sys::Oid>>>) {
    let tables: Vec<pg_sys::Oid> = tables.unwrap_or_default().into_iter().flatten().collect();
    let run = || -> Result<()> {
        Spi::connect(|client| {
            let subscriptions = client.select(
                "SELECT s.id AS subscription_id, v.endpoint, v.name AS subscription,
                        s.relid::oid AS relid, s.guard::text AS guard, s.events, s.behavior, s.changed,
                        s.columns, s.rename::text AS rename, s.redact, s.lookup, s.visibility_column, s.name
                 FROM webhook.subscription s JOIN webhook.subscriptions v ON v.id = s.id
                 WHERE s.relid::oid = ANY ($1) ORDER BY s.id",
                None,
                &[tables.clone().into()],
            )?;
            for row in subscriptions {
                let relid: pg_sys::Oid = not_null(&row, "relid")?;
                let endpoint: String = not_null(&row, "endpoint")?;
                let subscription: String = not_null(&row, "subscription")?;
                let guard: String = not_null(&row, "guard")?;
                let table = table::load(relid)?;
                let who = format!("subscription \"{subscription}\" of endpoint \"{endpoint}\"");
                let entries: Vec<serde_json::Value> = serde_json::from_str(&guard)
                    .map_err(|e| WebhookError::Internal(format!("guard of {who}: {e}")))?;
                for entry in entries {
                    let column = entry["column"].as_str().unwrap_or_default();
                    let attnum = entry["attnum"].as_i64().unwrap_or_default() as i32;
                    let type_oid = entry["type"].as_i64().unwrap_or_default();
                    let options = entry["options"]
                        .as_array()
                        .map(|o| {
                            o.iter()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    let now = client.select(
                        "SELECT attname::text AS name, atttypid::oid::int8 AS type, attisdropped AS dropped
                         FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = $2",
                        None,
                        &[relid.into(), attnum.into()],
                    )?;
                    let change = match now.into_iter().next() {
                        None => Some(format!("drop column \"{column}\"")),
                        Some(r) if not_null::<bool>(&r, "dropped")? => {
                            Some(format!("drop column \"{column}\""))
                        }
                        Some(r) => {
                            let name: String = not_null(&r, "name")?;
                            let now_type: i64 = not_null(&r, "type")?;
                            if name != column {
                                Some(format!("rename column \"{column}\" to \"{name}\""))
                            } else if now_type != type_oid {
                                Some(format!("change the type of column \"{column}\""))
                            } else {
                                None
                            }
                        }
                    };
                    if let Some(change) = change {
                        return Err(WebhookError::InUse(format!(
                            "cannot {change} of table {}: {who} names it in {options}; watch the table again without it, or unwatch it first",
                            table.qualified_name
                        )));
                    }
                }
                if let Err(e) = crate::capture::stored_options(&row)?.resolve(&table) {
                    return Err(WebhookError::InUse(format!(
                        "this change to table {} would break {who}: {e}; watch the table again with other options, or unwatch it first",
                        table.qualified_name
                    )));
                }
            }
            // WAL capture reads the old row of UPDATEs and DELETEs from the WAL (SPEC §8).
            if crate::schema::has_wal_ranges()? {
                require_full_identity(client, &tables)?;
            }
            // Hand-attached capture() triggers send to endpoints without a subscription with the
            // default options, which need the primary key.
            let triggers = client.select(
                "SELECT t.tgrelid AS relid, t.tgname::text AS trigger, t.tgargs AS args
                 FROM pg_catalog.pg_trigger t
                 WHERE t.tgfoid = 'webhook.capture'::regproc AND t.tgrelid = ANY ($1)",
                None,
                &[tables.clone().into()],
            )?;
            for row in triggers {
                let relid: pg_sys::Oid = not_null(&row, "relid")?;
                let trigger: String = not_null(&row, "trigger")?;
                let args: Vec<u8> = not_null(&row, "args")?;
                let endpoints = args
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned());
                let mut uses_defaults = false;
                for endpoint in endpoints {
                    uses_defaults |= client
                        .select(
                            "SELECT NOT EXISTS (SELECT 1 FROM webhook.subscription s
                                 JOIN webhook.endpoint e ON e.id = s.endpoint_id
                                 WHERE e.name = $1 AND s.relid::oid = $2)",
                            None,
                            &[endpoint.as_str().into(), relid.into()],
                        )?
                        .first()
                        .get_one::<bool>()?
                        .unwrap_or(false);
                }
                let table = table::load(relid)?;
                if uses_defaults && table.primary_key.is_empty() {
                    return Err(WebhookError::InUse(format!(
                        "this change to table {} would break trigger \"{trigger}\": it calls webhook.capture() for an endpoint with no subscription to the table, whose default options need a primary key; watch the table with lookup => ARRAY[...] first",
                        table.qualified_name
                    )));
                }
            }
            Ok(())
        })
    };
    run().or_raise()
}
