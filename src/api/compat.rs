//! The C entry points of SQL signatures that a later version changed, kept for databases whose
//! extension is not updated yet: after a new library is installed, their old SQL definitions
//! still call the old symbols, with the old arguments, until `ALTER EXTENSION webhook UPDATE`.
//! Without these, such a call would fail with an internal error ("unboxing ... failed").
//!
//! A function whose arguments change gets a new symbol, `<name>_<version>_wrapper`, named in
//! its `#[pg_extern(name = ...)]`; its previous symbol stays here, with `sql = false` (the
//! extension's own scripts never name it), passing the new arguments' defaults.

use pgrx::prelude::*;
use pgrx::JsonB;

/// 0.1.0 and 0.2.0: `create_endpoint(name, url, method, headers, description, format)`.
#[pg_extern(sql = false)]
fn create_endpoint(
    name: Option<&str>,
    url: Option<&str>,
    method: Option<&str>,
    headers: Option<JsonB>,
    description: Option<&str>,
    format: Option<&str>,
) -> String {
    super::endpoints::create_endpoint_0_3(
        name,
        url,
        method,
        headers,
        description,
        format,
        None,
        None,
    )
}

/// 0.1.0 and 0.2.0: `alter_endpoint(name, url, method, headers, description, enabled, format)`.
#[pg_extern(sql = false)]
fn alter_endpoint(
    name: Option<&str>,
    url: Option<&str>,
    method: Option<&str>,
    headers: Option<JsonB>,
    description: Option<&str>,
    enabled: Option<bool>,
    format: Option<&str>,
) {
    super::endpoints::alter_endpoint_0_3(
        name,
        url,
        method,
        headers,
        description,
        enabled,
        format,
        None,
        None,
    )
}

/// 0.1.0 and 0.2.0: `redeliver_failed(endpoint)`, every failed delivery (no window). Until
/// `ALTER EXTENSION webhook UPDATE` the queue has no census messages (no `batch_id`): each
/// delivery is its own message there.
#[pg_extern(sql = false)]
fn redeliver_failed(endpoint: Option<&str>) -> i64 {
    use crate::delivery::Status;
    use crate::error::{OrRaise, Result};
    let run = || -> Result<i64> {
        let endpoint = super::required(endpoint, "endpoint")?;
        let batches = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = 'webhook.delivery'::regclass
                            AND attname = 'batch_id' AND NOT attisdropped)",
        )?
        .unwrap_or(false);
        if batches {
            return super::deliveries::requeue(endpoint, &[Status::Failed], Default::default());
        }
        let count = Spi::connect_mut(|client| -> Result<i64> {
            let id = super::endpoint_id(client, endpoint)?;
            let rows = client.update(
                &format!(
                    "WITH requeued AS (
                         UPDATE webhook.delivery SET {}
                         WHERE endpoint_id = $1 AND status = $2 RETURNING 1)
                     SELECT count(*) FROM requeued",
                    super::deliveries::REQUEUE
                ),
                None,
                &[id.into(), Status::Failed.as_sql().into()],
            )?;
            Ok(super::first_value(rows)?.unwrap_or(0))
        })?;
        crate::shmem::wake_workers_at_commit();
        Ok(count)
    };
    run().or_raise()
}
