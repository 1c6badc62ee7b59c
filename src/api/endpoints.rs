//! Destinations: create, alter, rotate their secret, drop, send a test request.

use super::subscriptions::{require_trigger_right, watched_tables};
use super::{endpoint_id, first_value, invalidate_capture_plans, require_current_schema, required};
use crate::delivery;
use crate::endpoint::{self, Format};
use crate::error::{not_null, OrRaise, Result, WebhookError};
use crate::http::{self, Destination, DESTINATION_COLUMNS};
use crate::log::statement_hidden_from_log;
use crate::{guc, shmem, sign};
use pgrx::prelude::*;
use pgrx::spi::{quote_identifier, quote_literal, SpiClient};
use pgrx::JsonB;
use std::time::Duration;

/// Every backend's capture plans hold endpoint ids, formats and enabled flags: make them all
/// rebuild after this transaction commits.
fn invalidate_endpoint_caches(client: &SpiClient) -> Result<()> {
    let endpoint_table = client
        .select("SELECT 'webhook.endpoint'::regclass::oid", None, &[])?
        .first()
        .get_one::<pg_sys::Oid>()?
        .ok_or_else(|| WebhookError::Internal("webhook.endpoint has no OID".into()))?;
    invalidate_capture_plans(endpoint_table);
    Ok(())
}

/// Register a destination; returns its signing secret (the one given, or a new one), which is
/// shown only this once. (`_0_3`: the C symbol of this signature; see api::compat.)
#[pg_extern(name = "create_endpoint", security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)] // one per setting, as SQL callers name them
pub(super) fn create_endpoint_0_3(
    name: Option<&str>,
    url: Option<&str>,
    method: default!(Option<&str>, "'POST'"),
    headers: default!(Option<JsonB>, "'{}'"),
    description: default!(Option<&str>, "NULL"),
    format: default!(Option<&str>, "'rownd'"),
    batch_size: default!(Option<i32>, "NULL"),
    secret: default!(Option<&str>, "NULL"),
) -> String {
    let _hidden = secret.map(|_| statement_hidden_from_log());
    let run = || -> Result<String> {
        let name = endpoint::validate_name(required(name, "name")?)?;
        let url = endpoint::validate_url(required(url, "url")?)?;
        let method = endpoint::validate_method(required(method, "method")?)?;
        let headers = required(headers, "headers")?.0;
        endpoint::validate_headers(&headers)?;
        let format = required(format, "format")?;
        let batch_size = endpoint::resolve_batch_size(Format::parse(format)?, batch_size, None)?;
        let secret = match secret {
            Some(given) => sign::validate_secret(given)?,
            None => sign::new_secret(),
        };
        Spi::connect_mut(|client| -> Result<()> {
            if endpoint_id(client, &name).is_ok() {
                return Err(WebhookError::DuplicateEndpoint(name.clone()));
            }
            let insert = if !crate::schema::installed_before_0_3()? {
                "INSERT INTO webhook.endpoint (name, url, method, headers, description, format, secret,
                                               batch_size)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            } else {
                // ($8 unused: a declared parameter need not appear.)
                "INSERT INTO webhook.endpoint (name, url, method, headers, description, format, secret)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            };
            client.update(
                insert,
                None,
                &[
                    name.as_str().into(),
                    url.as_str().into(),
                    method.as_str().into(),
                    JsonB(headers).into(),
                    description.into(),
                    format.into(),
                    secret.as_str().into(),
                    batch_size.into(),
                ],
            )?;
            Ok(())
        })?;
        Ok(secret)
    };
    run().or_raise()
}

/// Change an endpoint's settings; NULL leaves a setting as it is, except that a change of
/// format resets an unspecified batch_size to the new format's default.
#[pg_extern(name = "alter_endpoint", security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)] // one per setting, as SQL callers name them
pub(super) fn alter_endpoint_0_3(
    name: Option<&str>,
    url: default!(Option<&str>, "NULL"),
    method: default!(Option<&str>, "NULL"),
    headers: default!(Option<JsonB>, "NULL"),
    description: default!(Option<&str>, "NULL"),
    enabled: default!(Option<bool>, "NULL"),
    format: default!(Option<&str>, "NULL"),
    batch_size: default!(Option<i32>, "NULL"),
    ordering: default!(Option<&str>, "NULL"),
) {
    let run = || -> Result<()> {
        let name = required(name, "name")?;
        let ordering = ordering.map(endpoint::Ordering::parse).transpose()?;
        let url = url.map(endpoint::validate_url).transpose()?;
        let method = method.map(endpoint::validate_method).transpose()?;
        if let Some(h) = &headers {
            endpoint::validate_headers(&h.0)?;
        }
        let format = format.map(Format::parse).transpose()?;
        Spi::connect_mut(|client| -> Result<()> {
            let id = endpoint_id(client, name)?;
            let batch_sizes = !crate::schema::installed_before_0_3()?;
            let (current, current_batch) = client
                .update(
                    if batch_sizes {
                        "SELECT format, batch_size FROM webhook.endpoint WHERE id = $1 FOR UPDATE"
                    } else {
                        "SELECT format, 1 AS batch_size FROM webhook.endpoint WHERE id = $1 FOR UPDATE"
                    },
                    None,
                    &[id.into()],
                )?
                .first()
                .get_two::<String, i32>()?;
            let current = match (current, current_batch) {
                (Some(f), Some(n)) => Some((Format::parse(&f)?, n)),
                _ => None,
            };
            let format = format.or(current.map(|(f, _)| f)).unwrap_or(Format::Rownd);
            let batch_size = endpoint::resolve_batch_size(format, batch_size, current)?;
            client
                .update(
                    if batch_sizes {
                        "UPDATE webhook.endpoint SET url = coalesce($2, url), method = coalesce($3, method),
                            headers = coalesce($4, headers), description = coalesce($5, description),
                            enabled = coalesce($6, enabled), format = $7, batch_size = $8,
                            -- Enabled again: disable_after counts failures from now on.
                            failing_since = CASE WHEN $6 AND NOT enabled AND failing_since IS NOT NULL
                                                 THEN now() ELSE failing_since END
                         WHERE id = $1"
                    } else {
                        "UPDATE webhook.endpoint SET url = coalesce($2, url), method = coalesce($3, method),
                            headers = coalesce($4, headers), description = coalesce($5, description),
                            enabled = coalesce($6, enabled), format = $7
                         WHERE id = $1"
                    },
                    None,
                    &[
                        id.into(),
                        url.into(),
                        method.into(),
                        headers.into(),
                        description.into(),
                        enabled.into(),
                        format.as_sql().into(),
                        batch_size.into(),
                    ],
                )?;
            if let Some(ordering) = ordering {
                set_ordering(client, id, ordering)?;
            }
            invalidate_endpoint_caches(client)?;
            Ok(())
        })?;
        shmem::wake_workers_at_commit();
        Ok(())
    };
    run().or_raise()
}

/// Switch an endpoint's ordering. Capture gives keys to the deliveries of ordered endpoints
/// only, so what was queued before ordering was switched on is not ordered; switching it off
/// removes every key the endpoint's deliveries hold, so that switching it on again later never
/// meets a key left behind.
fn set_ordering(client: &mut SpiClient, id: i64, ordering: endpoint::Ordering) -> Result<()> {
    client.update(
        "UPDATE webhook.endpoint SET ordering = $2 WHERE id = $1",
        None,
        &[id.into(), ordering.as_sql().into()],
    )?;
    if ordering == endpoint::Ordering::None {
        client.update(
            "UPDATE webhook.delivery SET order_key = NULL, order_key_old = NULL
             WHERE endpoint_id = $1 AND (order_key IS NOT NULL OR order_key_old IS NOT NULL)",
            None,
            &[id.into()],
        )?;
    }
    Ok(())
}

/// Replace an endpoint's secret with the one given or a new one; the one it replaces keeps
/// signing for webhook.rotation_overlap, and so does every earlier one still inside its own.
#[pg_extern(name = "rotate_secret", security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_secret_0_3(name: Option<&str>, secret: default!(Option<&str>, "NULL")) -> String {
    let _hidden = secret.map(|_| statement_hidden_from_log());
    let run = || -> Result<String> {
        let name = required(name, "name")?;
        let secret = match secret {
            Some(given) => sign::validate_secret(given)?,
            None => sign::new_secret(),
        };
        Spi::connect_mut(|client| -> Result<()> {
            let id = endpoint_id(client, name)?;
            // The row lock makes concurrent rotations of one endpoint take turns.
            // (update: SPI's read-only mode refuses FOR UPDATE.)
            let current: String = first_value(client.update(
                "SELECT secret FROM webhook.endpoint WHERE id = $1 FOR UPDATE",
                None,
                &[id.into()],
            )?)?
            .ok_or_else(|| WebhookError::UnknownEndpoint(name.to_string()))?;
            if current == secret {
                return Err(WebhookError::invalid(format!(
                    "the secret given to rotate_secret is endpoint \"{name}\"'s current secret; \
                     pass a new one, or NULL to have one generated"
                )));
            }
            // Expired secrets go; so does the new one if it was a previous secret (rolling a
            // rotation back), since it is now the current one.
            client.update(
                "DELETE FROM webhook.previous_secret
                 WHERE endpoint_id = $1 AND (expires_at <= now() OR secret = $2)",
                None,
                &[id.into(), secret.as_str().into()],
            )?;
            let overlap = guc::rotation_overlap_secs();
            if overlap > 0 {
                client.update(
                    "INSERT INTO webhook.previous_secret (endpoint_id, secret, retired_at, expires_at)
                     VALUES ($1, $2, clock_timestamp(), now() + $3 * interval '1 second')
                     ON CONFLICT (endpoint_id, secret) DO UPDATE
                     SET retired_at = excluded.retired_at,
                         expires_at = greatest(previous_secret.expires_at, excluded.expires_at)",
                    None,
                    &[id.into(), current.as_str().into(), overlap.into()],
                )?;
            }
            client.update(
                "UPDATE webhook.endpoint SET secret = $2 WHERE id = $1",
                None,
                &[id.into(), secret.as_str().into()],
            )?;
            Ok(())
        })?;
        Ok(secret)
    };
    run().or_raise()
}

/// rotate_secret(name) of 0.1.0 and 0.2.0, until `ALTER EXTENSION webhook UPDATE`. Only their
/// definition calls this symbol, so the schema is theirs: one previous secret, in
/// webhook.endpoint (the upgrade carries it over).
#[pg_extern(sql = false)]
fn rotate_secret(name: Option<&str>) -> String {
    let run = || -> Result<String> {
        let name = required(name, "name")?;
        let secret = sign::new_secret();
        Spi::connect_mut(|client| -> Result<()> {
            let id = endpoint_id(client, name)?;
            client.update(
                "UPDATE webhook.endpoint SET previous_secret = secret, secret = $2,
                        previous_secret_expires_at = now() + $3 * interval '1 second'
                 WHERE id = $1",
                None,
                &[
                    id.into(),
                    secret.as_str().into(),
                    guc::rotation_overlap_secs().into(),
                ],
            )?;
            Ok(())
        })?;
        Ok(secret)
    };
    run().or_raise()
}

/// A `webhook.capture()` trigger that was not made by `watch` and names an endpoint.
struct HandTrigger {
    name: String,
    /// As SQL writes it (schema-qualified: the functions run with search_path = pg_catalog).
    table: String,
    relid: pg_sys::Oid,
    args: Vec<String>,
    definition: String,
    enabled: i8,
    comment: Option<String>,
}

/// The capture triggers attached by hand that name the endpoint: every `webhook.capture()`
/// trigger but `watch`'s own (`webhook_capture` on a table the endpoint watches, which
/// `capture::attach::sync` maintains), and not the clones PostgreSQL makes on partitions.
fn hand_triggers(
    client: &SpiClient,
    endpoint: &str,
    watched: &[pg_sys::Oid],
) -> Result<Vec<HandTrigger>> {
    let mut found = Vec::new();
    for row in client.select(
        "SELECT t.tgname::text AS name, t.tgrelid::regclass::text AS tbl, t.tgrelid AS relid,
                t.tgargs AS args, t.tgnargs::int AS nargs, pg_get_triggerdef(t.oid) AS definition,
                t.tgenabled AS enabled, obj_description(t.oid, 'pg_trigger') AS comment
         FROM pg_trigger t
         WHERE t.tgfoid = 'webhook.capture()'::regprocedure AND t.tgparentid = 0
         ORDER BY t.tgrelid::regclass::text, t.tgname",
        None,
        &[],
    )? {
        let name: String = not_null(&row, "name")?;
        let relid: pg_sys::Oid = not_null(&row, "relid")?;
        if name == "webhook_capture" && watched.contains(&relid) {
            continue;
        }
        let raw: Vec<u8> = row.get_by_name("args")?.unwrap_or_default();
        let nargs: i32 = not_null(&row, "nargs")?;
        let args = trigger_args(&raw, nargs as usize);
        if !args.iter().any(|a| a == endpoint) {
            continue;
        }
        found.push(HandTrigger {
            name,
            table: not_null(&row, "tbl")?,
            relid,
            args,
            definition: not_null(&row, "definition")?,
            enabled: not_null(&row, "enabled")?,
            comment: row.get_by_name("comment")?,
        });
    }
    Ok(found)
}

/// pg_trigger.tgargs: `nargs` strings, each ended by a NUL byte.
fn trigger_args(raw: &[u8], nargs: usize) -> Vec<String> {
    raw.split(|b| *b == 0)
        .take(nargs)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// A string literal as pg_get_triggerdef writes trigger arguments (ruleutils.c
/// simple_quote_literal): quotes doubled, backslashes too unless standard_conforming_strings.
fn triggerdef_literal(value: &str, standard_strings: bool) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || (c == '\\' && !standard_strings) {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The trigger's CREATE statement with `args` as webhook.capture()'s arguments instead of its
/// own: pg_get_triggerdef's text ends with the function call, whose argument list is cut off
/// exactly (it is rebuilt from the stored arguments) so that nothing before it is touched.
fn redefine(trigger: &HandTrigger, args: &[String], standard_strings: bool) -> Result<String> {
    let old = format!(
        "webhook.capture({})",
        trigger
            .args
            .iter()
            .map(|a| triggerdef_literal(a, standard_strings))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let head = trigger.definition.strip_suffix(&old).ok_or_else(|| {
        WebhookError::Internal(format!(
            "the definition of trigger \"{}\" on {} does not end with {old}: {}",
            trigger.name, trigger.table, trigger.definition
        ))
    })?;
    let new = args
        .iter()
        .map(|a| triggerdef_literal(a, standard_strings))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(format!("{head}webhook.capture({new})"))
}

/// Take `endpoint` out of each trigger's arguments, keeping everything else about it (name,
/// timing, events, columns, WHEN, transition tables, enabled state, comment); a trigger left
/// with no endpoint is dropped.
fn remove_from_triggers(
    client: &mut SpiClient,
    endpoint: &str,
    triggers: &[HandTrigger],
) -> Result<()> {
    let standard_strings = first_value::<String>(client.select(
        "SELECT current_setting('standard_conforming_strings')",
        None,
        &[],
    )?)?
    .is_none_or(|v| v == "on");
    for trigger in triggers {
        require_trigger_right(trigger.relid, &trigger.table)?;
        let rest: Vec<String> = trigger
            .args
            .iter()
            .filter(|a| *a != endpoint)
            .cloned()
            .collect();
        let create = if rest.is_empty() {
            None
        } else {
            Some(redefine(trigger, &rest, standard_strings)?)
        };
        let name = quote_identifier(&trigger.name);
        client.update(
            &format!("DROP TRIGGER {name} ON {}", trigger.table),
            None,
            &[],
        )?;
        let Some(create) = create else { continue };
        client.update(&create, None, &[])?;
        let state = match trigger.enabled as u8 {
            b'D' => Some("DISABLE TRIGGER"),
            b'R' => Some("ENABLE REPLICA TRIGGER"),
            b'A' => Some("ENABLE ALWAYS TRIGGER"),
            _ => None,
        };
        if let Some(state) = state {
            client.update(
                &format!("ALTER TABLE {} {state} {name}", trigger.table),
                None,
                &[],
            )?;
        }
        if let Some(comment) = &trigger.comment {
            client.update(
                &format!(
                    "COMMENT ON TRIGGER {name} ON {} IS {}",
                    trigger.table,
                    quote_literal(comment)
                ),
                None,
                &[],
            )?;
        }
    }
    Ok(())
}

/// Remove an endpoint, its subscriptions (and capture triggers) and its queued deliveries.
/// Capture triggers attached by hand that name it make this an error, unless `force`, which
/// removes its name from them.
#[pg_extern(name = "drop_endpoint", security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn drop_endpoint_0_3(name: Option<&str>, force: default!(Option<bool>, "false")) {
    let run = || -> Result<()> {
        let name = required(name, "name")?;
        let force = required(force, "force")?;
        Spi::connect_mut(|client| -> Result<()> {
            let id = endpoint_id(client, name)?;
            let tables = watched_tables(client, id)?;
            let by_hand = hand_triggers(client, name, &tables)?;
            if !by_hand.is_empty() {
                if !force {
                    return Err(WebhookError::NamedByTriggers {
                        endpoint: name.to_string(),
                        triggers: by_hand
                            .iter()
                            .map(|t| format!("trigger \"{}\" on {}", t.name, t.table))
                            .collect(),
                    });
                }
                remove_from_triggers(client, name, &by_hand)?;
            }
            client.update(
                "DELETE FROM webhook.subscription WHERE endpoint_id = $1",
                None,
                &[id.into()],
            )?;
            for relid in tables {
                crate::capture::attach::sync(client, relid)?;
            }
            client.update(
                &delivery::delete_sql("SELECT id FROM webhook.delivery WHERE endpoint_id = $1"),
                None,
                &[id.into()],
            )?;
            client.update(
                "DELETE FROM webhook.endpoint WHERE id = $1",
                None,
                &[id.into()],
            )?;
            invalidate_endpoint_caches(client)?;
            Ok(())
        })
    };
    run().or_raise()
}

/// drop_endpoint(name) of 0.1.0 and 0.2.0, until `ALTER EXTENSION webhook UPDATE`: it refuses
/// as the new one does without `force`.
#[pg_extern(sql = false)]
fn drop_endpoint(name: Option<&str>) {
    drop_endpoint_0_3(name, Some(false))
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
    let run = || -> Result<(Destination, Format)> {
        let name = required(name, "name")?;
        Spi::connect(|client| -> Result<(Destination, Format)> {
            require_current_schema(client)?;
            let id = endpoint_id(client, name)?;
            let row = client
                .select(
                    &format!(
                        "SELECT {DESTINATION_COLUMNS}, format FROM webhook.endpoint WHERE id = $1"
                    ),
                    None,
                    &[id.into()],
                )?
                .next()
                .ok_or_else(|| WebhookError::UnknownEndpoint(name.to_string()))?;
            let format: String = not_null(&row, "format")?;
            Ok((Destination::from_row(&row)?, Format::parse(&format)?))
        })
    };
    let (dest, format) = run().or_raise();
    let timeout = guc::timeout();
    let policy = guc::network_policy();
    let now = time::OffsetDateTime::now_utc();
    let msg_id = format!("test_{}", now.unix_timestamp_nanos());
    let occurred_at = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let body = sample_body(format, name.unwrap_or_default(), &msg_id, &occurred_at);
    // The request runs on its own thread so that this backend stays cancellable.
    let (tx, rx) = crossbeam_channel::bounded(1);
    let request = http::spawn_without_signals("webhook-test-endpoint".into(), move || {
        let agent = http::agent(std::sync::Arc::new(std::sync::RwLock::new(policy)));
        let _ = tx.send(http::send(&agent, &dest, &msg_id, body.as_bytes(), timeout));
    });
    if let Err(e) = request {
        WebhookError::Internal(format!("cannot start the test request's thread: {e}")).raise();
    }
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

/// What `test_endpoint` sends: a sample in the endpoint's own format (SPEC §2), so a receiver
/// can check its parsing as well as its signature checks.
fn sample_body(format: Format, endpoint: &str, msg_id: &str, occurred_at: &str) -> String {
    let record = serde_json::json!({"message": "webhook.test_endpoint sample"});
    match format {
        Format::Rownd => serde_json::json!({
            "data": record,
            "redacted": [],
            "meta": {"operation": "test", "id": msg_id, "occurred_at": occurred_at},
        }),
        Format::Census => serde_json::json!({
            "api_version": 1,
            "operation": "changed",
            "sync_run_at": occurred_at,
            "connection_name": endpoint,
            "model_name": "webhook.test_endpoint",
            "schema_name": "webhook",
            "table_name": "test_endpoint",
            "sync_configuration_id": null,
            "sync_configuration_name": null,
            "data": [record],
        }),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn samples_come_in_the_endpoints_format() {
        let at = "2026-01-01T00:00:00Z";
        let rownd: Value =
            serde_json::from_str(&sample_body(Format::Rownd, "e", "test_1", at)).unwrap();
        assert_eq!(
            rownd,
            json!({"data": {"message": "webhook.test_endpoint sample"}, "redacted": [],
                   "meta": {"operation": "test", "id": "test_1", "occurred_at": at}})
        );
        let census = sample_body(Format::Census, "Webhook \"Test\"", "test_1", at);
        assert!(
            census.starts_with(r#"{"api_version":1,"operation":"changed","#),
            "{census}"
        );
        let census: Value = serde_json::from_str(&census).unwrap();
        assert_eq!(
            census,
            json!({"api_version": 1, "operation": "changed", "sync_run_at": at,
                   "connection_name": "Webhook \"Test\"", "model_name": "webhook.test_endpoint",
                   "schema_name": "webhook", "table_name": "test_endpoint",
                   "sync_configuration_id": null, "sync_configuration_name": null,
                   "data": [{"message": "webhook.test_endpoint sample"}]})
        );
    }

    #[test]
    fn trigger_arguments_and_definitions() {
        assert_eq!(trigger_args(b"a\0b c\0it's\0", 3), ["a", "b c", "it's"]);
        assert_eq!(trigger_args(b"", 0), Vec::<String>::new());
        assert_eq!(triggerdef_literal("it's a\\b", true), r"'it''s a\b'");
        assert_eq!(triggerdef_literal("it's a\\b", false), r"'it''s a\\b'");
        let trigger = HandTrigger {
            name: "t".into(),
            table: "public.notes".into(),
            relid: pg_sys::Oid::INVALID,
            args: vec!["a".into(), "webhook.capture('a')".into(), "it's".into()],
            definition: "CREATE TRIGGER t AFTER UPDATE OF v ON public.notes FOR EACH ROW \
                WHEN ((new.v <> 'EXECUTE FUNCTION webhook.capture(''a'')'::text)) \
                EXECUTE FUNCTION webhook.capture('a', 'webhook.capture(''a'')', 'it''s')"
                .into(),
            enabled: b'O' as i8,
            comment: None,
        };
        assert_eq!(
            redefine(&trigger, &["it's".to_string()], true).unwrap(),
            "CREATE TRIGGER t AFTER UPDATE OF v ON public.notes FOR EACH ROW \
             WHEN ((new.v <> 'EXECUTE FUNCTION webhook.capture(''a'')'::text)) \
             EXECUTE FUNCTION webhook.capture('it''s')"
        );
        let other = HandTrigger {
            args: vec!["b".into()],
            ..trigger
        };
        assert!(redefine(&other, &[], true).is_err());
    }
}
