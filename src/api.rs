//! The SQL functions (SPEC §5). Each runs as the extension owner (SECURITY DEFINER, search_path
//! pinned) and validates every argument before changing anything.

use crate::endpoint::{self, Format};
use crate::error::{OrRaise, Result, WebhookError};
use crate::subscription::Options;
use crate::worker::sender::{self, Destination};
use crate::{guc, shmem, sign, table};
use pgrx::prelude::*;
use pgrx::spi::{quote_literal, SpiClient};
use pgrx::{JsonB, PgRelation};
use std::time::Duration;

fn required<T>(value: Option<T>, arg: &'static str) -> Result<T> {
    value.ok_or(WebhookError::NullArgument(arg))
}

/// A text[] argument with no NULL elements.
fn string_list(
    value: Option<Vec<Option<String>>>,
    arg: &'static str,
) -> Result<Option<Vec<String>>> {
    value
        .map(|items| {
            items
                .into_iter()
                .map(|i| {
                    i.ok_or_else(|| {
                        WebhookError::invalid(format!("{arg} must not contain NULL elements"))
                    })
                })
                .collect()
        })
        .transpose()
}

fn endpoint_id(client: &SpiClient, name: &str) -> Result<i64> {
    client
        .select(
            "SELECT id FROM webhook.endpoint WHERE name = $1",
            None,
            &[name.into()],
        )
        .expect("endpoint look-up")
        .next()
        .and_then(|r| r.get::<i64>(1).expect("id"))
        .ok_or_else(|| WebhookError::UnknownEndpoint(name.to_string()))
}

/// Tables an endpoint watches.
fn watched_tables(client: &SpiClient, endpoint_id: i64) -> Vec<pg_sys::Oid> {
    client
        .select(
            "SELECT relid::oid FROM webhook.subscription WHERE endpoint_id = $1",
            None,
            &[endpoint_id.into()],
        )
        .expect("subscription look-up")
        .filter_map(|r| r.get::<pg_sys::Oid>(1).expect("relid"))
        .collect()
}

/// The functions run as the extension owner; a caller may still only watch tables it could read
/// and attach triggers to itself.
fn require_table_rights(relid: pg_sys::Oid, table: &str) -> Result<()> {
    let caller = unsafe { pg_sys::GetOuterUserId() };
    for mode in [pg_sys::ACL_SELECT, pg_sys::ACL_TRIGGER] {
        let verdict = unsafe { pg_sys::pg_class_aclcheck(relid, caller, mode as pg_sys::AclMode) };
        if verdict != pg_sys::AclResult::ACLCHECK_OK {
            return Err(WebhookError::PermissionDenied(format!(
                "permission denied for table {table}: watch and unwatch need the SELECT and TRIGGER privileges on it"
            )));
        }
    }
    Ok(())
}

/// Capture plans are cached per backend; make every backend rebuild this table's.
fn invalidate_capture_plans(relid: pg_sys::Oid) {
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}

/// Every backend's capture plans hold endpoint ids, formats and enabled flags: make them all
/// rebuild after this transaction commits.
fn invalidate_endpoint_caches(client: &SpiClient) {
    let endpoint_table = client
        .select("SELECT 'webhook.endpoint'::regclass::oid", None, &[])
        .expect("endpoint table look-up")
        .first()
        .get_one::<pg_sys::Oid>()
        .expect("endpoint table look-up")
        .expect("endpoint table exists");
    invalidate_capture_plans(endpoint_table);
}

/// Make the table's `webhook_capture` trigger name exactly the endpoints subscribed to it.
fn sync_trigger(client: &mut SpiClient, relid: pg_sys::Oid) {
    let table: String = client
        .select("SELECT $1::regclass::text", None, &[relid.into()])
        .expect("table name")
        .first()
        .get_one()
        .expect("table name")
        .expect("table exists");
    let endpoints: Vec<String> = client
        .select(
            "SELECT e.name FROM webhook.subscription s JOIN webhook.endpoint e ON e.id = s.endpoint_id
             WHERE s.relid::oid = $1 ORDER BY e.name",
            None,
            &[relid.into()],
        )
        .expect("subscribed endpoints")
        .filter_map(|r| r.get::<String>(1).expect("name"))
        .collect();
    let exists = client
        .select(
            "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1 AND tgname = 'webhook_capture')",
            None,
            &[relid.into()],
        )
        .expect("trigger look-up")
        .first()
        .get_one::<bool>()
        .expect("trigger look-up")
        .unwrap_or(false);
    if exists {
        client
            .update(
                &format!("DROP TRIGGER webhook_capture ON {table}"),
                None,
                &[],
            )
            .expect("dropping the capture trigger");
    }
    if !endpoints.is_empty() {
        let args = endpoints
            .iter()
            .map(quote_literal)
            .collect::<Vec<_>>()
            .join(", ");
        client
            .update(
                &format!(
                    "CREATE TRIGGER webhook_capture AFTER INSERT OR UPDATE OR DELETE ON {table}
                     FOR EACH ROW EXECUTE FUNCTION webhook.capture({args})"
                ),
                None,
                &[],
            )
            .expect("creating the capture trigger");
    }
    invalidate_capture_plans(relid);
}

/// Register a destination; returns its signing secret, which is shown only this once.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn create_endpoint(
    name: Option<&str>,
    url: Option<&str>,
    method: default!(Option<&str>, "'POST'"),
    headers: default!(Option<JsonB>, "'{}'"),
    description: default!(Option<&str>, "NULL"),
    format: default!(Option<&str>, "'rownd'"),
) -> String {
    let run = || -> Result<String> {
        let name = endpoint::validate_name(required(name, "name")?)?;
        let url = endpoint::validate_url(required(url, "url")?)?;
        let method = endpoint::validate_method(required(method, "method")?)?;
        let headers = required(headers, "headers")?.0;
        endpoint::validate_headers(&headers)?;
        let format = required(format, "format")?;
        Format::parse(format)?;
        let secret = sign::new_secret();
        Spi::connect_mut(|client| {
            if endpoint_id(client, &name).is_ok() {
                return Err(WebhookError::DuplicateEndpoint(name.clone()));
            }
            client
                .update(
                    "INSERT INTO webhook.endpoint (name, url, method, headers, description, format, secret)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    None,
                    &[
                        name.as_str().into(),
                        url.as_str().into(),
                        method.as_str().into(),
                        JsonB(headers).into(),
                        description.into(),
                        format.into(),
                        secret.as_str().into(),
                    ],
                )
                .expect("inserting the endpoint");
            Ok(())
        })?;
        Ok(secret)
    };
    run().or_raise()
}

/// Change an endpoint's settings; NULL leaves a setting as it is.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn alter_endpoint(
    name: Option<&str>,
    url: default!(Option<&str>, "NULL"),
    method: default!(Option<&str>, "NULL"),
    headers: default!(Option<JsonB>, "NULL"),
    description: default!(Option<&str>, "NULL"),
    enabled: default!(Option<bool>, "NULL"),
    format: default!(Option<&str>, "NULL"),
) {
    let run = || -> Result<()> {
        let name = required(name, "name")?;
        let url = url.map(endpoint::validate_url).transpose()?;
        let method = method.map(endpoint::validate_method).transpose()?;
        if let Some(h) = &headers {
            endpoint::validate_headers(&h.0)?;
        }
        if let Some(f) = format {
            Format::parse(f)?;
        }
        Spi::connect_mut(|client| {
            let id = endpoint_id(client, name)?;
            client
                .update(
                    "UPDATE webhook.endpoint SET url = coalesce($2, url), method = coalesce($3, method),
                        headers = coalesce($4, headers), description = coalesce($5, description),
                        enabled = coalesce($6, enabled), format = coalesce($7, format)
                     WHERE id = $1",
                    None,
                    &[
                        id.into(),
                        url.into(),
                        method.into(),
                        headers.into(),
                        description.into(),
                        enabled.into(),
                        format.into(),
                    ],
                )
                .expect("updating the endpoint");
            invalidate_endpoint_caches(client);
            Ok(())
        })?;
        shmem::wake_workers_at_commit();
        Ok(())
    };
    run().or_raise()
}

/// Replace an endpoint's secret; the previous one keeps signing for webhook.rotation_overlap.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_secret(name: Option<&str>) -> String {
    let run = || -> Result<String> {
        let name = required(name, "name")?;
        let secret = sign::new_secret();
        Spi::connect_mut(|client| {
            let id = endpoint_id(client, name)?;
            client
                .update(
                    "UPDATE webhook.endpoint SET previous_secret = secret, secret = $2,
                        previous_secret_expires_at = now() + $3 * interval '1 second'
                     WHERE id = $1",
                    None,
                    &[
                        id.into(),
                        secret.as_str().into(),
                        guc::rotation_overlap_secs().into(),
                    ],
                )
                .expect("rotating the secret");
            Ok(())
        })?;
        Ok(secret)
    };
    run().or_raise()
}

/// Remove an endpoint, its subscriptions (and capture triggers) and its queued deliveries.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn drop_endpoint(name: Option<&str>) {
    let run = || -> Result<()> {
        let name = required(name, "name")?;
        Spi::connect_mut(|client| {
            let id = endpoint_id(client, name)?;
            let tables = watched_tables(client, id);
            client
                .update(
                    "DELETE FROM webhook.subscription WHERE endpoint_id = $1",
                    None,
                    &[id.into()],
                )
                .expect("deleting subscriptions");
            for relid in tables {
                sync_trigger(client, relid);
            }
            client
                .update(
                    "DELETE FROM webhook.attempt a USING webhook.delivery d
                     WHERE a.delivery_id = d.id AND d.endpoint_id = $1",
                    None,
                    &[id.into()],
                )
                .expect("deleting attempts");
            client
                .update(
                    "DELETE FROM webhook.delivery WHERE endpoint_id = $1",
                    None,
                    &[id.into()],
                )
                .expect("deleting deliveries");
            client
                .update(
                    "DELETE FROM webhook.endpoint WHERE id = $1",
                    None,
                    &[id.into()],
                )
                .expect("deleting the endpoint");
            invalidate_endpoint_caches(client);
            Ok(())
        })
    };
    run().or_raise()
}

/// Send a signed sample payload now and report what happened (nothing is queued).
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn test_endpoint(
    name: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(status_code, Option<i32>),
        name!(latency_ms, Option<f64>),
        name!(error, Option<String>),
    ),
> {
    let run = || -> Result<Destination> {
        let name = required(name, "name")?;
        Spi::connect(|client| {
            let id = endpoint_id(client, name)?;
            let row = client
                .select(
                    "SELECT url, method, headers, secret,
                            CASE WHEN previous_secret_expires_at > now() THEN previous_secret END
                     FROM webhook.endpoint WHERE id = $1",
                    None,
                    &[id.into()],
                )
                .expect("endpoint look-up")
                .first();
            let headers: Option<JsonB> = row.get(3).expect("headers");
            Ok(Destination {
                endpoint_id: id,
                url: row.get(1).expect("url").unwrap_or_default(),
                method: row.get(2).expect("method").unwrap_or_default(),
                headers: headers
                    .map(|h| endpoint::validate_headers(&h.0).unwrap_or_default())
                    .unwrap_or_default(),
                secrets: [
                    row.get::<String>(4).expect("secret"),
                    row.get::<String>(5).expect("previous"),
                ]
                .into_iter()
                .flatten()
                .collect(),
            })
        })
    };
    let dest = run().or_raise();
    let timeout = guc::timeout();
    let policy = guc::network_policy();
    let now = time::OffsetDateTime::now_utc();
    let msg_id = format!("test_{}", now.unix_timestamp_nanos());
    let body = serde_json::json!({
        "data": {"message": "webhook.test_endpoint sample"},
        "redacted": [],
        "meta": {
            "operation": "test",
            "id": msg_id,
            "occurred_at": now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        }
    })
    .to_string();
    // The request runs on its own thread so that this backend stays cancellable.
    let (tx, rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        sender::block_signals();
        let agent = sender::agent(std::sync::Arc::new(std::sync::RwLock::new(policy)));
        let _ = tx.send(sender::send(
            &agent,
            &dest,
            &msg_id,
            body.as_bytes(),
            timeout,
        ));
    });
    let attempt = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(a) => break a,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                pgrx::check_for_interrupts!();
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => WebhookError::WrongState(
                "the test request's thread stopped without an answer".into(),
            )
            .raise(),
        }
    };
    TableIterator::once((
        attempt.status.map(i32::from),
        Some(attempt.duration.as_secs_f64() * 1000.0),
        attempt.error,
    ))
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
                )
                .expect("saving the subscription")
                .first()
                .get_one()
                .expect("subscription id")
                .expect("RETURNING id");
            sync_trigger(client, relid);
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
                )
                .expect("deleting the subscription");
            if removed.is_empty() {
                let table = client
                    .select("SELECT $1::regclass::text", None, &[relid.into()])
                    .expect("table name")
                    .first()
                    .get_one::<String>()
                    .expect("table name")
                    .unwrap_or_else(|| relid.to_u32().to_string());
                return Err(WebhookError::NotWatched {
                    table,
                    endpoint: endpoint.to_string(),
                });
            }
            sync_trigger(client, relid);
            Ok(())
        })
    };
    run().or_raise()
}

/// Queue a delivery again: due now, with a fresh retry cycle (attempt numbers continue).
const REQUEUE: &str = "status = 'pending', next_attempt_at = now(), cycle_start = attempts";

/// Queue a delivered or failed delivery again, with a fresh retry cycle and the same webhook-id.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn redeliver(delivery_id: Option<i64>) {
    let run = || -> Result<()> {
        let id = required(delivery_id, "delivery_id")?;
        Spi::connect_mut(|client| {
            let status: Option<String> = client
                .update(
                    "SELECT status FROM webhook.delivery WHERE id = $1 FOR UPDATE",
                    None,
                    &[id.into()],
                )
                .expect("delivery look-up")
                .next()
                .and_then(|r| r.get(1).expect("status"));
            match status.as_deref() {
                None => return Err(WebhookError::UnknownDelivery(id)),
                Some("delivered") | Some("failed") => {}
                Some(other) => {
                    return Err(WebhookError::WrongState(format!(
                        "delivery {id} is {other}; only delivered or failed deliveries can be redelivered"
                    )))
                }
            }
            client
                .update(
                    &format!("UPDATE webhook.delivery SET {REQUEUE} WHERE id = $1"),
                    None,
                    &[id.into()],
                )
                .expect("requeueing the delivery");
            Ok(())
        })?;
        shmem::wake_workers_at_commit();
        Ok(())
    };
    run().or_raise()
}

/// Queue every failed delivery of an endpoint again; returns how many.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn redeliver_failed(endpoint: Option<&str>) -> i64 {
    let run = || -> Result<i64> {
        let endpoint = required(endpoint, "endpoint")?;
        let count = Spi::connect_mut(|client| {
            let id = endpoint_id(client, endpoint)?;
            let rows = client
                .update(
                    &format!(
                        "UPDATE webhook.delivery SET {REQUEUE}
                         WHERE endpoint_id = $1 AND status = 'failed' RETURNING id"
                    ),
                    None,
                    &[id.into()],
                )
                .expect("requeueing deliveries");
            Ok(rows.len() as i64)
        })?;
        shmem::wake_workers_at_commit();
        Ok(count)
    };
    run().or_raise()
}

/// Delete failed (default) or delivered deliveries older than `older_than`, optionally only one
/// endpoint's; returns how many. Pending and in-flight deliveries are never purged.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn purge(
    status: default!(Option<&str>, "'failed'"),
    older_than: default!(Option<pgrx::datum::Interval>, "'0 seconds'"),
    endpoint: default!(Option<&str>, "NULL"),
) -> i64 {
    let run = || -> Result<i64> {
        let status = required(status, "status")?;
        if status != "failed" && status != "delivered" {
            return Err(WebhookError::invalid(format!(
                "cannot purge deliveries with status \"{status}\": accepted statuses are failed, delivered"
            )));
        }
        let older_than = required(older_than, "older_than")?;
        Spi::connect_mut(|client| {
            let endpoint_id = endpoint.map(|e| endpoint_id(client, e)).transpose()?;
            let count = client
                .update(
                    "WITH gone AS (
                        DELETE FROM webhook.delivery
                        WHERE status = $1 AND coalesce(delivered_at, created_at) < now() - $2
                          AND ($3::bigint IS NULL OR endpoint_id = $3)
                        RETURNING id
                     ), attempts AS (
                        DELETE FROM webhook.attempt a USING gone WHERE a.delivery_id = gone.id
                     )
                     SELECT count(*) FROM gone",
                    None,
                    &[status.into(), older_than.into(), endpoint_id.into()],
                )
                .expect("purging deliveries")
                .first()
                .get_one::<i64>()
                .expect("purge count")
                .unwrap_or(0);
            Ok(count)
        })
    };
    run().or_raise()
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    fn setup_users() {
        Spi::run(
            "CREATE TABLE users (user_id int PRIMARY KEY, email text, first_name text, hidden text[]);
             CREATE TABLE nokey (a int, b text);",
        )
        .unwrap();
        Spi::get_one::<String>("SELECT webhook.create_endpoint('ep', 'http://127.0.0.1:9/hook')")
            .unwrap();
    }

    fn payloads() -> Vec<Value> {
        Spi::connect(|c| {
            c.select(
                "SELECT payload FROM webhook.delivery ORDER BY id",
                None,
                &[],
            )
            .unwrap()
            .into_iter()
            .map(|r| serde_json::from_str(&r.get::<String>(1).unwrap().unwrap()).unwrap())
            .collect()
        })
    }

    fn strip_meta_extras(mut v: Value) -> Value {
        let meta = v["meta"].as_object_mut().unwrap();
        assert!(meta
            .remove("id")
            .unwrap()
            .as_str()
            .unwrap()
            .parse::<i64>()
            .is_ok());
        assert!(meta
            .remove("occurred_at")
            .unwrap()
            .as_str()
            .unwrap()
            .ends_with('Z'));
        assert_eq!(meta.remove("table").unwrap(), "public.users");
        v
    }

    #[pg_test]
    fn capture_builds_rownd_payloads() {
        setup_users();
        Spi::run(
            "SELECT webhook.watch('users', 'ep', rename => '{\"email\": \"mail\"}', redact => '{first_name}',
                                  visibility_column => 'hidden');
             INSERT INTO users VALUES (1, 'a@b.c', 'Ann', '{}');
             UPDATE users SET hidden = '{mail}' WHERE user_id = 1;
             UPDATE users SET email = 'n@b.c' WHERE user_id = 1;
             DELETE FROM users;",
        )
        .unwrap();
        let got: Vec<Value> = payloads().into_iter().map(strip_meta_extras).collect();
        let lookup = json!([{"field": "user_id", "value": 1}]);
        assert_eq!(
            got,
            vec![
                json!({"data": {"user_id": 1, "mail": "a@b.c", "first_name": "<<REDACTED>>"},
                       "redacted": ["first_name"],
                       "meta": {"operation": "data_insert", "lookup_values": lookup}}),
                json!({"data": {"user_id": 1, "mail": "<<REDACTED>>", "first_name": "<<REDACTED>>"},
                       "redacted": ["mail", "first_name"],
                       "meta": {"operation": "visibility_update", "lookup_values": lookup}}),
                json!({"data": {"user_id": 1, "mail": "<<REDACTED>>", "first_name": "<<REDACTED>>"},
                       "redacted": ["mail", "first_name"],
                       "meta": {"operation": "data_update", "lookup_values": lookup}}),
                json!({"data": {"user_id": 1}, "meta": {"operation": "delete", "lookup_values": lookup}}),
            ]
        );
    }

    #[pg_test]
    fn events_and_columns_filter_what_is_queued() {
        setup_users();
        Spi::run(
            "SELECT webhook.watch('users', 'ep', events => '{delete}', columns => '{email}');
             INSERT INTO users VALUES (1, 'a@b.c', 'Ann', '{}');
             DELETE FROM users;",
        )
        .unwrap();
        let got = payloads();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["meta"]["operation"], "delete");
        assert_eq!(got[0]["data"], json!({"user_id": 1}));
    }

    #[pg_test]
    fn values_follow_postgres_json_conversion() {
        Spi::run(
            "CREATE TABLE t (id int PRIMARY KEY, n numeric, ts timestamptz, j jsonb, arr int[], b bytea, nothing text);
             SELECT webhook.create_endpoint('ep', 'http://127.0.0.1:9/');
             SELECT webhook.watch('t', 'ep');
             INSERT INTO t VALUES (1, 12345678901234567890.123456789, '2021-08-31 23:03:29+00',
                                   '{\"a\": [1, \"x\"]}', '{1,2}', '\\x0102', NULL);",
        )
        .unwrap();
        let body = Spi::get_one::<String>("SELECT payload FROM webhook.delivery")
            .unwrap()
            .unwrap();
        assert!(body.contains("12345678901234567890.123456789"), "{body}");
        let expected: Value = serde_json::from_str(
            &Spi::get_one::<String>("SELECT to_jsonb(t)::text FROM t")
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        let got: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(got["data"], expected);
    }

    #[pg_test]
    fn census_format_envelope() {
        setup_users();
        Spi::run(
            "SELECT webhook.create_endpoint('cen', 'http://127.0.0.1:9/', format => 'census');
             SELECT webhook.watch('users', 'cen', name => 'active users', columns => '{email}');
             INSERT INTO users VALUES (1, 'a@b.c', 'Ann', '{}');",
        )
        .unwrap();
        let got = &payloads()[0];
        assert_eq!(got["operation"], "changed");
        assert_eq!(got["connection_name"], "cen");
        assert_eq!(got["model_name"], "active users");
        assert_eq!(got["data"], json!([{"email": "a@b.c"}]));
    }

    #[pg_test]
    fn unwatch_removes_the_trigger() {
        setup_users();
        Spi::run("SELECT webhook.watch('users', 'ep'); SELECT webhook.unwatch('users', 'ep');")
            .unwrap();
        let triggers =
            Spi::get_one::<i64>("SELECT count(*) FROM pg_trigger WHERE tgname = 'webhook_capture'");
        assert_eq!(triggers, Ok(Some(0)));
    }

    #[pg_test(error = "endpoint \"nope\" does not exist")]
    fn watch_unknown_endpoint() {
        setup_users();
        Spi::run("SELECT webhook.watch('users', 'nope')").unwrap();
    }

    #[pg_test(error = "endpoint \"ep\" already exists")]
    fn duplicate_endpoint() {
        setup_users();
        Spi::run("SELECT webhook.create_endpoint('ep', 'http://127.0.0.1:9/')").unwrap();
    }

    #[pg_test(error = "invalid URL \"ftp://x/\": only http:// and https:// URLs are accepted")]
    fn ftp_url() {
        Spi::run("SELECT webhook.create_endpoint('e', 'ftp://x/')").unwrap();
    }

    #[pg_test(error = "unknown HTTP method \"FETCH\": accepted methods are POST, PUT, PATCH")]
    fn unknown_method() {
        Spi::run("SELECT webhook.create_endpoint('e', 'http://x/', method => 'FETCH')").unwrap();
    }

    #[pg_test(error = "unknown event \"truncate\": accepted events are insert, update, delete")]
    fn unknown_event() {
        setup_users();
        Spi::run("SELECT webhook.watch('users', 'ep', events => '{truncate}')").unwrap();
    }

    #[pg_test(error = "column \"nope\" named in columns does not exist in table public.users")]
    fn unknown_column() {
        setup_users();
        Spi::run("SELECT webhook.watch('users', 'ep', columns => '{nope}')").unwrap();
    }

    #[pg_test(
        error = "table public.nokey has no primary key; pass lookup => ARRAY['column', ...] to name the columns that identify a row"
    )]
    fn table_without_key() {
        setup_users();
        Spi::run("SELECT webhook.watch('nokey', 'ep')").unwrap();
    }

    #[pg_test(
        error = "trigger \"by_hand\" on public.users names endpoint \"ghost\", which does not exist"
    )]
    fn hand_made_trigger_with_unknown_endpoint() {
        setup_users();
        Spi::run(
            "CREATE TRIGGER by_hand AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION webhook.capture('ghost');
             INSERT INTO users VALUES (1, 'a@b.c', 'Ann', '{}');",
        )
        .unwrap();
    }
}
