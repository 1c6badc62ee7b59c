//! Destinations: create, alter, rotate their secret, drop, send a test request.

use super::subscriptions::{sync_trigger, watched_tables};
use super::{endpoint_id, invalidate_capture_plans, required};
use crate::delivery;
use crate::endpoint::{self, Format};
use crate::error::{OrRaise, Result, WebhookError};
use crate::http::{self, Destination, DESTINATION_COLUMNS};
use crate::{guc, shmem, sign};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
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

/// Whether webhook.endpoint has batch_size: not until `ALTER EXTENSION webhook UPDATE` to 0.3.0,
/// while the old SQL definitions call in through api::compat.
fn has_batch_size(client: &SpiClient) -> Result<bool> {
    Ok(client
        .select(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'webhook.endpoint'::regclass
                            AND attname = 'batch_size' AND NOT attisdropped)",
            None,
            &[],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false))
}

/// Register a destination; returns its signing secret, which is shown only this once.
/// (`_0_3`: the C symbol of this signature; see api::compat.)
#[pg_extern(name = "create_endpoint", security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn create_endpoint_0_3(
    name: Option<&str>,
    url: Option<&str>,
    method: default!(Option<&str>, "'POST'"),
    headers: default!(Option<JsonB>, "'{}'"),
    description: default!(Option<&str>, "NULL"),
    format: default!(Option<&str>, "'rownd'"),
    batch_size: default!(Option<i32>, "NULL"),
) -> String {
    let run = || -> Result<String> {
        let name = endpoint::validate_name(required(name, "name")?)?;
        let url = endpoint::validate_url(required(url, "url")?)?;
        let method = endpoint::validate_method(required(method, "method")?)?;
        let headers = required(headers, "headers")?.0;
        endpoint::validate_headers(&headers)?;
        let format = required(format, "format")?;
        let batch_size = endpoint::resolve_batch_size(Format::parse(format)?, batch_size, None)?;
        let secret = sign::new_secret();
        Spi::connect_mut(|client| -> Result<()> {
            if endpoint_id(client, &name).is_ok() {
                return Err(WebhookError::DuplicateEndpoint(name.clone()));
            }
            let insert = if has_batch_size(client)? {
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
) {
    let run = || -> Result<()> {
        let name = required(name, "name")?;
        let url = url.map(endpoint::validate_url).transpose()?;
        let method = method.map(endpoint::validate_method).transpose()?;
        if let Some(h) = &headers {
            endpoint::validate_headers(&h.0)?;
        }
        let format = format.map(Format::parse).transpose()?;
        Spi::connect_mut(|client| -> Result<()> {
            let id = endpoint_id(client, name)?;
            let batch_sizes = has_batch_size(client)?;
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
                            enabled = coalesce($6, enabled), format = $7, batch_size = $8
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
            invalidate_endpoint_caches(client)?;
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

/// Remove an endpoint, its subscriptions (and capture triggers) and its queued deliveries.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn drop_endpoint(name: Option<&str>) {
    let run = || -> Result<()> {
        let name = required(name, "name")?;
        Spi::connect_mut(|client| -> Result<()> {
            let id = endpoint_id(client, name)?;
            let tables = watched_tables(client, id)?;
            client.update(
                "DELETE FROM webhook.subscription WHERE endpoint_id = $1",
                None,
                &[id.into()],
            )?;
            for relid in tables {
                sync_trigger(client, relid)?;
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
        Spi::connect(|client| -> Result<Destination> {
            let id = endpoint_id(client, name)?;
            let row = client
                .select(
                    &format!("SELECT {DESTINATION_COLUMNS} FROM webhook.endpoint WHERE id = $1"),
                    None,
                    &[id.into()],
                )?
                .next()
                .ok_or_else(|| WebhookError::UnknownEndpoint(name.to_string()))?;
            Destination::from_row(&row)
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
