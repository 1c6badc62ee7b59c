//! Deliveries after the fact: redeliver one, redeliver an endpoint's failed ones, purge.

use super::{endpoint_id, first_value, required};
use crate::delivery::{self, Status};
use crate::error::{OrRaise, Result, WebhookError};
use crate::shmem;
use pgrx::prelude::*;

/// Queue a delivery again: due now, with a fresh retry cycle (attempt numbers continue).
const REQUEUE: &str = "status = 'pending', next_attempt_at = now(), cycle_start = attempts";

/// Queue a delivered or failed delivery again, with a fresh retry cycle and the same webhook-id.
/// A census change is sent in its message: the whole message goes again, byte for byte.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn redeliver(delivery_id: Option<i64>) {
    let run = || -> Result<()> {
        let id = required(delivery_id, "delivery_id")?;
        Spi::connect_mut(|client| -> Result<()> {
            let rows = client.update(
                "SELECT m.id, m.status FROM webhook.delivery d
                 JOIN webhook.delivery m ON m.id = coalesce(d.batch_id, d.id)
                 WHERE d.id = $1 FOR UPDATE OF m",
                None,
                &[id.into()],
            )?;
            if rows.is_empty() {
                return Err(WebhookError::UnknownDelivery(id));
            }
            let (message, status) = rows.first().get_two::<i64, String>()?;
            let (Some(message), Some(status)) = (message, status) else {
                return Err(WebhookError::UnknownDelivery(id));
            };
            match Status::from_sql(&status) {
                Some(s) if s.is_final() => {}
                _ => {
                    return Err(WebhookError::WrongState(format!(
                        "delivery {id} is {status}; only delivered or failed deliveries can be redelivered"
                    )))
                }
            }
            client.update(
                &format!("UPDATE webhook.delivery SET {REQUEUE} WHERE id = $1"),
                None,
                &[message.into()],
            )?;
            Ok(())
        })?;
        shmem::wake_workers_at_commit();
        Ok(())
    };
    run().or_raise()
}

/// Queue every failed delivery of an endpoint again; returns how many changes (a census message
/// counts its records).
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn redeliver_failed(endpoint: Option<&str>) -> i64 {
    let run = || -> Result<i64> {
        let endpoint = required(endpoint, "endpoint")?;
        let count = Spi::connect_mut(|client| -> Result<i64> {
            let id = endpoint_id(client, endpoint)?;
            let rows = client.update(
                &format!(
                    "WITH requeued AS (
                         UPDATE webhook.delivery SET {REQUEUE}
                         WHERE endpoint_id = $1 AND status = $2 RETURNING records)
                     SELECT coalesce(sum(coalesce(records, 1)), 0)::int8 FROM requeued"
                ),
                None,
                &[id.into(), Status::Failed.as_sql().into()],
            )?;
            Ok(first_value(rows)?.unwrap_or(0))
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
        if !Status::from_sql(status).is_some_and(Status::is_final) {
            return Err(WebhookError::invalid(format!(
                "cannot purge deliveries with status \"{status}\": accepted statuses are failed, delivered"
            )));
        }
        let older_than = required(older_than, "older_than")?;
        Spi::connect_mut(|client| -> Result<i64> {
            let endpoint_id = endpoint.map(|e| endpoint_id(client, e)).transpose()?;
            let sql = delivery::delete_sql(
                "SELECT id FROM webhook.delivery
                 WHERE status = $1 AND coalesce(delivered_at, created_at) < now() - $2
                   AND ($3::bigint IS NULL OR endpoint_id = $3)",
            );
            Ok(client
                .update(
                    &sql,
                    None,
                    &[status.into(), older_than.into(), endpoint_id.into()],
                )?
                .first()
                .get_one::<i64>()?
                .unwrap_or(0))
        })
    };
    run().or_raise()
}
