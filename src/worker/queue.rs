//! The worker's side of the queue table: claim due deliveries under a lease, record outcomes.
//! Every statement handles a whole batch.

use super::sender::{Destination, Job, Outcome};
use crate::schedule::{self, Next};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::{JsonB, PgBuiltInOids, PgOid};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

const CLAIM_SQL: &str = "
WITH due AS (
    -- Per enabled endpoint, through delivery_due: a disabled endpoint's backlog is never scanned,
    -- and no endpoint gets more than $3 requests in flight ($4/$5: what each already has).
    -- Each endpoint's scan starts after its cursor ($6/$7/$8: the last row claimed), so it does
    -- not walk the index entries that claimed and delivered rows leave behind until VACUUM.
    SELECT d.id, d.status, d.attempts, d.next_attempt_at
    FROM webhook.endpoint e
    LEFT JOIN unnest($6::int8[], $7::timestamptz[], $8::int8[]) AS c(endpoint_id, after_at, after_id)
           ON c.endpoint_id = e.id
    CROSS JOIN LATERAL (
        SELECT d.id, d.status, d.attempts, d.next_attempt_at FROM webhook.delivery d
        WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'delivering')
          AND d.next_attempt_at <= now()
          AND (d.next_attempt_at, d.id) > (coalesce(c.after_at, '-infinity'), coalesce(c.after_id, 0))
        ORDER BY d.next_attempt_at, d.id
        LIMIT greatest(0, least($1, $3 - coalesce(
            (SELECT b.n FROM unnest($4::int8[], $5::int4[]) AS b(id, n) WHERE b.id = e.id), 0)))
        FOR UPDATE SKIP LOCKED
    ) d
    WHERE e.enabled
    ORDER BY d.next_attempt_at, d.id
    LIMIT $1
), claimed AS (
    -- By primary key: rows `due` locked cannot change before this update.
    UPDATE webhook.delivery d
    SET status = 'delivering', attempts = d.attempts + 1,
        next_attempt_at = now() + $2 * interval '1 millisecond'
    WHERE d.id = ANY (ARRAY(SELECT due.id FROM due))
    RETURNING d.id, d.endpoint_id, d.attempts, d.cycle_start, d.payload
), lost AS (
    -- A row still `delivering` had its lease expire: its attempt never got an outcome.
    INSERT INTO webhook.attempt (delivery_id, attempt, started_at, error)
    SELECT id, attempts, now(),
           'no outcome recorded: the worker stopped during this attempt and its lease expired'
    FROM due WHERE status = 'delivering'
    ON CONFLICT DO NOTHING
)
SELECT c.id, c.endpoint_id, c.attempts, c.cycle_start, c.payload, due.next_attempt_at
FROM claimed c JOIN due ON due.id = c.id";

const DESTINATIONS_SQL: &str = "
SELECT id, url, method, headers, secret,
       CASE WHEN previous_secret_expires_at > now() THEN previous_secret END
FROM webhook.endpoint WHERE id = ANY($1)";

// `d.id = ANY($1)` beside each join on the arrays keeps every plan, generic ones included, on
// the primary key: a plan that cannot see the arrays' length might otherwise hash the queue.
const RECORD_SQL: &str = "
WITH r AS (
    SELECT * FROM unnest($1::int8[], $2::int4[], $3::float8[], $4::float8[], $5::int4[],
                         $6::text[], $7::text[], $8::float8[], $9::text[])
        AS r(id, attempt, started, duration_ms, status_code, error, next, delay_ms, body)
), attempts AS (
    INSERT INTO webhook.attempt
        (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body)
    SELECT r.id, r.attempt, to_timestamp(r.started), r.duration_ms, r.status_code, r.error, r.body
    FROM r WHERE EXISTS (SELECT 1 FROM webhook.delivery d WHERE d.id = r.id AND d.id = ANY($1))
    ON CONFLICT DO NOTHING
)
UPDATE webhook.delivery d SET
    status = CASE r.next WHEN 'retry' THEN 'pending' ELSE r.next END,
    next_attempt_at = CASE WHEN r.next = 'retry'
                           THEN now() + r.delay_ms * interval '1 millisecond'
                           ELSE d.next_attempt_at END,
    last_status_code = r.status_code,
    last_error = r.error,
    delivered_at = CASE WHEN r.next = 'delivered' THEN now() ELSE d.delivered_at END
FROM r
WHERE d.id = r.id AND d.id = ANY($1) AND d.attempts = r.attempt AND d.status = 'delivering'";

const HEALTH_SQL: &str = "
UPDATE webhook.endpoint e SET
    consecutive_failures = CASE WHEN u.succeeded THEN u.trailing_failures
                                ELSE e.consecutive_failures + u.trailing_failures END,
    last_success_at = CASE WHEN u.succeeded THEN now() ELSE e.last_success_at END,
    last_failure_at = CASE WHEN u.failed THEN now() ELSE e.last_failure_at END
FROM unnest($1::int8[], $2::bool[], $3::int4[], $4::bool[]) AS u(id, succeeded, trailing_failures, failed)
WHERE e.id = u.id AND e.id = ANY($1)";

const NEXT_DUE_SQL: &str = "
SELECT extract(epoch FROM min(d.next_attempt_at) - now())::float8
FROM webhook.endpoint e
CROSS JOIN LATERAL (
    SELECT d.next_attempt_at FROM webhook.delivery d
    WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'delivering')
    ORDER BY d.next_attempt_at LIMIT 1
) d
WHERE e.enabled";

const RETENTION_SQL: &str = "
WITH gone AS (
    DELETE FROM webhook.delivery WHERE id IN (
        SELECT id FROM webhook.delivery
        WHERE status = 'delivered' AND delivered_at < now() - $1 * interval '1 second'
        LIMIT $2)
    RETURNING id
), attempts AS (
    DELETE FROM webhook.attempt a USING gone WHERE a.delivery_id = gone.id
)
SELECT count(*) FROM gone";

const READY_SQL: &str =
    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'webhook')";

/// The worker's statements, parsed and planned once per worker (the claim runs hundreds of
/// times a second under load; planning it each time cost more than running it).
struct Statements {
    claim: OwnedPreparedStatement,
    destinations: OwnedPreparedStatement,
    record: OwnedPreparedStatement,
    health: OwnedPreparedStatement,
    next_due: OwnedPreparedStatement,
    retention: OwnedPreparedStatement,
}

thread_local! {
    static STATEMENTS: RefCell<Option<Rc<Statements>>> = const { RefCell::new(None) };
}

/// Prepared on first use, inside the caller's transaction, once the extension exists.
fn statements() -> Rc<Statements> {
    if let Some(s) = STATEMENTS.with(|s| s.borrow().clone()) {
        return s;
    }
    let t = |oid: PgBuiltInOids| PgOid::BuiltIn(oid);
    let prepared = Spi::connect(|c| {
        let write = |sql: &str, args: &[PgOid]| {
            c.prepare_mut(sql, args)
                .unwrap_or_else(|e| panic!("preparing a worker statement: {e}"))
                .keep()
        };
        let read = |sql: &str, args: &[PgOid]| {
            c.prepare(sql, args)
                .unwrap_or_else(|e| panic!("preparing a worker statement: {e}"))
                .keep()
        };
        Statements {
            claim: write(
                CLAIM_SQL,
                &[
                    t(PgBuiltInOids::INT8OID),
                    t(PgBuiltInOids::FLOAT8OID),
                    t(PgBuiltInOids::INT4OID),
                    t(PgBuiltInOids::INT8ARRAYOID),
                    t(PgBuiltInOids::INT4ARRAYOID),
                    t(PgBuiltInOids::INT8ARRAYOID),
                    t(PgBuiltInOids::TIMESTAMPTZARRAYOID),
                    t(PgBuiltInOids::INT8ARRAYOID),
                ],
            ),
            destinations: read(DESTINATIONS_SQL, &[t(PgBuiltInOids::INT8ARRAYOID)]),
            record: write(
                RECORD_SQL,
                &[
                    t(PgBuiltInOids::INT8ARRAYOID),
                    t(PgBuiltInOids::INT4ARRAYOID),
                    t(PgBuiltInOids::FLOAT8ARRAYOID),
                    t(PgBuiltInOids::FLOAT8ARRAYOID),
                    t(PgBuiltInOids::INT4ARRAYOID),
                    t(PgBuiltInOids::TEXTARRAYOID),
                    t(PgBuiltInOids::TEXTARRAYOID),
                    t(PgBuiltInOids::FLOAT8ARRAYOID),
                    t(PgBuiltInOids::TEXTARRAYOID),
                ],
            ),
            health: write(
                HEALTH_SQL,
                &[
                    t(PgBuiltInOids::INT8ARRAYOID),
                    t(PgBuiltInOids::BOOLARRAYOID),
                    t(PgBuiltInOids::INT4ARRAYOID),
                    t(PgBuiltInOids::BOOLARRAYOID),
                ],
            ),
            next_due: read(NEXT_DUE_SQL, &[]),
            retention: write(
                RETENTION_SQL,
                &[t(PgBuiltInOids::INT4OID), t(PgBuiltInOids::INT8OID)],
            ),
        }
    });
    let prepared = Rc::new(prepared);
    STATEMENTS.with(|s| *s.borrow_mut() = Some(prepared.clone()));
    prepared
}

/// Is the extension created in this database?
pub fn ready() -> bool {
    Spi::get_one::<bool>(READY_SQL)
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// How many requests each endpoint may have in flight, and how many it has.
pub struct Caps<'a> {
    pub per_endpoint: i32,
    pub in_flight: &'a HashMap<i64, usize>,
}

impl Caps<'_> {
    /// How many deliveries a claim of `limit` may take for `endpoint`.
    fn allowance(&self, endpoint: i64, limit: i64) -> i64 {
        let busy = self.in_flight.get(&endpoint).copied().unwrap_or(0) as i64;
        (self.per_endpoint as i64 - busy).min(limit).max(0)
    }
}

/// Per endpoint, the last delivery claimed (`next_attempt_at` as it was, id): the next claim
/// scans from there. A cursor is dropped when its endpoint's scan comes up short, and all of
/// them periodically, so that rows committed late with an earlier time are found by a full scan.
#[derive(Default)]
pub struct Cursors(HashMap<i64, (TimestampWithTimeZone, i64)>);

impl Cursors {
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// Claim up to `limit` due deliveries; each becomes a job leased for `lease`.
pub fn claim(
    limit: i64,
    lease: Duration,
    timeout: Duration,
    caps: &Caps,
    cursors: &mut Cursors,
) -> Vec<Job> {
    let (busy_ids, busy_counts): (Vec<i64>, Vec<i32>) = caps
        .in_flight
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(e, n)| (*e, *n as i32))
        .unzip();
    let mut cursor_ids = Vec::new();
    let mut cursor_at = Vec::new();
    let mut cursor_last = Vec::new();
    for (endpoint, (at, id)) in &cursors.0 {
        cursor_ids.push(*endpoint);
        cursor_at.push(*at);
        cursor_last.push(*id);
    }
    let statements = statements();
    Spi::connect_mut(|client| {
        let rows = client
            .update(
                &statements.claim,
                None,
                &[
                    limit.into(),
                    (lease.as_millis() as f64).into(),
                    caps.per_endpoint.into(),
                    busy_ids.into(),
                    busy_counts.into(),
                    cursor_ids.into(),
                    cursor_at.into(),
                    cursor_last.into(),
                ],
            )
            .expect("claiming deliveries");
        let mut claimed_per_endpoint: HashMap<i64, i64> = HashMap::new();
        let claimed: Vec<(i64, i64, i32, i32, String)> = rows
            .into_iter()
            .map(|r| {
                let id: i64 = r.get(1).expect("id").unwrap_or_default();
                let endpoint_id: i64 = r.get(2).expect("endpoint_id").unwrap_or_default();
                let was_due: Option<TimestampWithTimeZone> = r.get(6).expect("was_due");
                *claimed_per_endpoint.entry(endpoint_id).or_default() += 1;
                if let Some(at) = was_due {
                    let cursor = cursors.0.entry(endpoint_id).or_insert((at, id));
                    if (at, id) > *cursor {
                        *cursor = (at, id);
                    }
                }
                (
                    id,
                    endpoint_id,
                    r.get(3).expect("attempts").unwrap_or_default(),
                    r.get(4).expect("cycle_start").unwrap_or_default(),
                    r.get(5).expect("payload").unwrap_or_default(),
                )
            })
            .collect();
        // An endpoint that got fewer rows than it was allowed has nothing more due after its
        // cursor: its next claim scans from the start.
        cursors.0.retain(|endpoint, _| {
            claimed_per_endpoint.get(endpoint).copied().unwrap_or(0)
                >= caps.allowance(*endpoint, limit)
        });
        if claimed.is_empty() {
            return Vec::new();
        }
        let mut endpoint_ids: Vec<i64> = claimed.iter().map(|c| c.1).collect();
        endpoint_ids.sort_unstable();
        endpoint_ids.dedup();
        let destinations: HashMap<i64, Arc<Destination>> = client
            .select(&statements.destinations, None, &[endpoint_ids.into()])
            .expect("loading endpoints")
            .map(|r| {
                let id: i64 = r.get(1).expect("id").unwrap_or_default();
                let headers: Option<JsonB> = r.get(4).expect("headers");
                let headers = headers
                    .and_then(|h| h.0.as_object().cloned())
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string())))
                    .collect();
                let secrets = [
                    r.get::<String>(5).expect("secret"),
                    r.get::<String>(6).expect("previous"),
                ]
                .into_iter()
                .flatten()
                .collect();
                let dest = Destination {
                    endpoint_id: id,
                    url: r.get(2).expect("url").unwrap_or_default(),
                    method: r.get(3).expect("method").unwrap_or_default(),
                    headers,
                    secrets,
                };
                (id, Arc::new(dest))
            })
            .collect();
        claimed
            .into_iter()
            .filter_map(|(id, endpoint_id, attempts, cycle_start, payload)| {
                Some(Job {
                    delivery_id: id,
                    attempt: attempts,
                    attempt_in_cycle: attempts - cycle_start,
                    destination: destinations.get(&endpoint_id)?.clone(),
                    body: payload,
                    timeout,
                })
            })
            .collect()
    })
}

/// Seconds until the next delivery falls due (negative when overdue), if any is queued.
pub fn next_due() -> Option<f64> {
    let statements = statements();
    Spi::connect(|client| {
        client
            .select(&statements.next_due, None, &[])
            .and_then(|rows| rows.first().get_one::<f64>())
            .ok()
            .flatten()
    })
}

/// Record finished attempts: one attempt row each, the delivery's next state, endpoint health.
pub fn record(outcomes: &[Outcome], delays: &[Duration]) {
    if outcomes.is_empty() {
        return;
    }
    let mut ids = Vec::new();
    let mut attempts = Vec::new();
    let mut started = Vec::new();
    let mut durations = Vec::new();
    let mut statuses: Vec<Option<i32>> = Vec::new();
    let mut errors: Vec<Option<String>> = Vec::new();
    let mut nexts = Vec::new();
    let mut delay_ms = Vec::new();
    let mut bodies: Vec<Option<String>> = Vec::new();
    // Per endpoint, in completion order: (succeeded in this batch, failures since the last success, failed).
    let mut health: HashMap<i64, (bool, i32, bool)> = HashMap::new();
    for o in outcomes {
        let r = &o.result;
        let next = schedule::next_step(r.success(), o.attempt_in_cycle, delays, r.retry_after);
        ids.push(o.delivery_id);
        attempts.push(o.attempt);
        started.push(r.started_at);
        durations.push(r.duration.as_secs_f64() * 1000.0);
        statuses.push(r.status.map(i32::from));
        errors.push(r.error.clone());
        nexts.push(next.as_str().to_string());
        delay_ms.push(match next {
            Next::RetryAfter(d) => d.as_secs_f64() * 1000.0,
            _ => 0.0,
        });
        bodies.push(r.response_body.as_ref().map(|b| b.replace('\0', "")));
        let h = health.entry(o.endpoint_id).or_insert((false, 0, false));
        if r.success() {
            *h = (true, 0, h.2);
        } else {
            *h = (h.0, h.1 + 1, true);
        }
    }
    let (mut h_ids, mut h_ok, mut h_trailing, mut h_failed) = (vec![], vec![], vec![], vec![]);
    for (id, (ok, trailing, failed)) in health {
        h_ids.push(id);
        h_ok.push(ok);
        h_trailing.push(trailing);
        h_failed.push(failed);
    }
    let statements = statements();
    Spi::connect_mut(|client| {
        client
            .update(
                &statements.record,
                None,
                &[
                    ids.into(),
                    attempts.into(),
                    started.into(),
                    durations.into(),
                    statuses.into(),
                    errors.into(),
                    nexts.into(),
                    delay_ms.into(),
                    bodies.into(),
                ],
            )
            .expect("recording attempts");
        client
            .update(
                &statements.health,
                None,
                &[
                    h_ids.into(),
                    h_ok.into(),
                    h_trailing.into(),
                    h_failed.into(),
                ],
            )
            .expect("recording endpoint health");
    });
}

/// Delete up to `limit` delivered deliveries older than `retention_secs`; returns how many.
pub fn purge_delivered(retention_secs: i32, limit: i64) -> i64 {
    let statements = statements();
    Spi::connect_mut(|client| {
        client
            .update(
                &statements.retention,
                None,
                &[retention_secs.into(), limit.into()],
            )
            .expect("retention purge")
            .first()
            .get_one::<i64>()
            .expect("purge count")
            .unwrap_or(0)
    })
}
