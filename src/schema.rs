//! The installed schema's version. Between a package upgrade and `ALTER EXTENSION webhook
//! UPDATE` this library runs against an older schema: the code that must keep working there
//! (capture, `watch`, `create_endpoint`) asks here, in one place, what that schema has.

use crate::error::Result;
use pgrx::prelude::*;

/// Whether `version` (pg_extension.extversion) predates 0.3.0's columns (filters, behaviours,
/// message ids, batch sizes, WAL ranges).
pub fn before_0_3(version: &str) -> bool {
    matches!(version, "0.1.0" | "0.2.0")
}

/// Whether the installed schema predates 0.3.0 (false when the extension is not installed).
pub fn installed_before_0_3() -> Result<bool> {
    let version = Spi::connect(|c| {
        c.select(
            "SELECT e.extversion::pg_catalog.text FROM pg_catalog.pg_extension e
             WHERE e.extname OPERATOR(pg_catalog.=) 'webhook'",
            None,
            &[],
        )?
        .first()
        .get_one::<String>()
    })?;
    Ok(version.is_some_and(|v| before_0_3(&v)))
}

/// Whether the subscriptions have WAL ranges. Not the version: `ALTER EXTENSION webhook UPDATE`
/// records the new version before its script adds them, and the script's own ALTER TABLEs
/// reach the DDL guard.
pub fn has_wal_ranges() -> Result<bool> {
    Ok(Spi::connect(|c| {
        c.select(
            "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a
                WHERE a.attrelid OPERATOR(pg_catalog.=) 'webhook.subscription'::pg_catalog.regclass
                  AND a.attname OPERATOR(pg_catalog.=) 'wal_until' AND NOT a.attisdropped)",
            None,
            &[],
        )?
        .first()
        .get_one::<bool>()
    })?
    .unwrap_or(false))
}
