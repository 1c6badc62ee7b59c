//! Deliveries after the fact: redeliver one, redeliver an endpoint's failed ones, replay a time
//! window (SPEC §7), purge.

use super::{endpoint_id, first_value, required};
use crate::delivery::{self, Status};
use crate::error::{OrRaise, Result, WebhookError};
use crate::shmem;
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;

/// Queue a delivery again: due now, with a fresh retry cycle (attempt numbers continue).
pub(super) const REQUEUE: &str =
    "status = 'pending', next_attempt_at = now(), cycle_start = attempts";

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

/// Queue every failed delivery of an endpoint created in `[since, until)` again; returns how
/// many changes (a census message counts its records). (`_0_3`: the C symbol of this signature;
/// see api::compat.)
#[pg_extern(name = "redeliver_failed", security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
pub(super) fn redeliver_failed_0_3(
    endpoint: Option<&str>,
    since: default!(Option<TimestampWithTimeZone>, "'-infinity'"),
    until: default!(Option<TimestampWithTimeZone>, "now()"),
) -> i64 {
    let run = || -> Result<i64> {
        let window = Window::required(since, until)?;
        requeue(required(endpoint, "endpoint")?, &[Status::Failed], window)
    };
    run().or_raise()
}

/// Queue again, with their original webhook-ids and a fresh retry cycle, the endpoint's
/// delivered and failed deliveries created in `[since, until)` (SPEC §7); returns how many
/// changes. A census change goes again in its whole message.
#[pg_extern(security_definer, volatile)]
#[search_path(pg_catalog, pg_temp)]
fn replay(
    endpoint: Option<&str>,
    since: Option<TimestampWithTimeZone>,
    until: default!(Option<TimestampWithTimeZone>, "now()"),
) -> i64 {
    let run = || -> Result<i64> {
        let endpoint = required(endpoint, "endpoint")?;
        let window = Window::required(since, until)?;
        requeue(endpoint, &[Status::Delivered, Status::Failed], window)
    };
    run().or_raise()
}

/// A window `[since, until)` on `created_at`; `None` is unbounded (redeliver_failed's 0.2.0
/// signature had no window).
#[derive(Default)]
pub(super) struct Window {
    since: Option<TimestampWithTimeZone>,
    until: Option<TimestampWithTimeZone>,
}

impl Window {
    /// Both bounds given (not NULL) and in order.
    fn required(
        since: Option<TimestampWithTimeZone>,
        until: Option<TimestampWithTimeZone>,
    ) -> Result<Window> {
        let since = required(since, "since")?;
        let until = required(until, "until")?;
        let (after, since_text, until_text) = Spi::get_three_with_args::<bool, String, String>(
            "SELECT $1 > $2, $1::text, $2::text",
            &[since.into(), until.into()],
        )?;
        if after == Some(true) {
            return Err(WebhookError::invalid(format!(
                "since \"{}\" is later than until \"{}\": the window [since, until) must not end before it starts",
                since_text.unwrap_or_default(),
                until_text.unwrap_or_default()
            )));
        }
        Ok(Window {
            since: Some(since),
            until: Some(until),
        })
    }
}

/// Queue again the messages of `endpoint` in one of `statuses` that carry a change created in
/// `window`; returns how many changes they carry. Pending and in-flight messages are left
/// alone (the status test is re-checked on each row under its lock, so concurrent calls never
/// queue one twice). The window selects changes (`records IS NULL`); a census change's message
/// is its `batch_id`. No index leads with `created_at`: this is a scan of the queue, as `purge`.
pub(super) fn requeue(endpoint: &str, statuses: &[Status], window: Window) -> Result<i64> {
    let statuses: Vec<&str> = statuses.iter().map(|s| s.as_sql()).collect();
    let count = Spi::connect_mut(|client| -> Result<i64> {
        let id = endpoint_id(client, endpoint)?;
        let rows = client.update(
            &format!(
                "WITH requeued AS (
                     UPDATE webhook.delivery SET {REQUEUE}
                     WHERE id = ANY (ARRAY(
                               SELECT DISTINCT coalesce(c.batch_id, c.id) FROM webhook.delivery c
                               WHERE c.endpoint_id = $1 AND c.records IS NULL
                                 AND ($3::timestamptz IS NULL OR c.created_at >= $3)
                                 AND ($4::timestamptz IS NULL OR c.created_at < $4)))
                       AND status = ANY ($2)
                     RETURNING records)
                 SELECT coalesce(sum(coalesce(records, 1)), 0)::int8 FROM requeued"
            ),
            None,
            &[
                id.into(),
                statuses.into(),
                window.since.into(),
                window.until.into(),
            ],
        )?;
        Ok(first_value(rows)?.unwrap_or(0))
    })?;
    shmem::wake_workers_at_commit();
    Ok(count)
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
