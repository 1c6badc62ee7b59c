//! The SQL functions (SPEC §5), one file per thing they manage. Each runs as the extension
//! owner (SECURITY DEFINER, search_path pinned) and validates every argument before changing
//! anything.

mod compat;
mod deliveries;
mod endpoints;
mod events;
mod health;
mod subscriptions;
mod sync;

use crate::error::{Result, WebhookError};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};

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

/// The first column of a result's first row; None when there is no row (or it is NULL).
fn first_value<T: IntoDatum + FromDatum>(rows: SpiTupleTable) -> Result<Option<T>> {
    if rows.is_empty() {
        return Ok(None);
    }
    Ok(rows.first().get_one()?)
}

/// The id of the endpoint named `name`.
fn endpoint_id(client: &SpiClient, name: &str) -> Result<i64> {
    first_value(client.select(
        "SELECT id FROM webhook.endpoint WHERE name = $1",
        None,
        &[name.into()],
    )?)?
    .ok_or_else(|| WebhookError::UnknownEndpoint(name.to_string()))
}

/// Functions whose SQL definition did not change between versions run on a new library before
/// `ALTER EXTENSION webhook UPDATE`; those that read what the update adds say so instead of
/// failing on a missing table.
fn require_current_schema(client: &SpiClient) -> Result<()> {
    let installed: Option<String> = first_value(client.select(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'webhook'",
        None,
        &[],
    )?)?;
    let library = env!("CARGO_PKG_VERSION");
    match installed {
        Some(v) if v == library => Ok(()),
        other => Err(WebhookError::WrongState(format!(
            "the webhook extension in this database is version {}, its library is version {library}: run ALTER EXTENSION webhook UPDATE",
            other.unwrap_or_else(|| "(none)".into())
        ))),
    }
}

/// Capture plans are cached per backend; make every backend rebuild this table's.
fn invalidate_capture_plans(relid: pg_sys::Oid) {
    // SAFETY: called inside the API function's transaction, which the invalidation is queued
    // in and sent at commit; an unknown relid raises an ERROR (cache lookup failed), not UB.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}
