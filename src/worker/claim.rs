//! The worker's side of the queue table: claim due deliveries under a lease, record outcomes,
//! remove delivered ones past retention. Every statement handles a whole batch, is prepared
//! once per worker, and has one plan whatever the queue's statistics say.

use super::health;
use super::sender::{Job, Outcome};
use crate::delivery::{self, Status};
use crate::error::{not_null, Result};
use crate::http::{Destination, DESTINATION_COLUMNS};
use crate::{events, guc, message, schedule};
use pgrx::datum::TimestampWithTimeZone;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use pgrx::{PgBuiltInOids, PgOid};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Session settings under which every statement below has one plan, whatever the statistics
/// say about the queue. Without a sequential or bitmap scan to fall back on, the planner can
/// reach `webhook.delivery` only through an index whose conditions or order the statement names:
/// claims and next-due through `delivery_due` (the only index in `next_attempt_at` order),
/// retention through `delivery_delivered`, everything else by primary key (`id = ANY(array)`,
/// never a join on `id`, whose merge order would make a full primary-key scan a candidate).
/// The queue's statistics only ever matter as costs, and without these settings they decide:
/// after an ANALYZE of an empty queue the planner believes the partial indexes empty and scans
/// all of one for every outcome (300-400 deliveries/s instead of 11,000).
pub const PLANNER_SETTINGS: &[(&str, &str)] = &[
    ("enable_seqscan", "off"),
    ("enable_bitmapscan", "off"),
    // Statements are planned once per worker (the claim runs hundreds of times a second).
    ("plan_cache_mode", "force_generic_plan"),
    // Small index scans: JIT compilation would cost more than it saves.
    ("jit", "off"),
];

/// Apply PLANNER_SETTINGS to this session.
pub fn configure_session() -> Result<()> {
    for (name, value) in PLANNER_SETTINGS {
        Spi::run(&format!("SET {name} = {value}"))?;
    }
    Ok(())
}

/// For an ordered endpoint (SPEC §7), the condition under which delivery `d` may leave: the
/// latest earlier delivery of its subscription and key (of each of its keys, when an UPDATE
/// changed the key) is finished. Per key, capture order is commit order (writers of one row
/// take turns on its lock), so ids order a key's deliveries; each leaves only after the one
/// before it is finished, so looking at that one (`delivery_order`, backwards, one row) is
/// enough. A rownd delivery is finished by its status; a census change is `batched` from when
/// its message is formed, and the message, once delivered or dead-lettered, releases its
/// changes' keys (RECORD_SQL), so a keyed `batched` change is one whose message is unfinished.
/// The index holds every row, under a predicate no other statement implies (`octet_length(status)
/// > 0`, which this condition names): it leads with the key but holds `id`, and the planner
/// would otherwise consider it for every `id = ANY` lookup, and in some statistics states
/// choose it (see PLANNER_SETTINGS).
/// CLAIM_SQL and NEXT_DUE_SQL repeat it word for word (tests/isolation/run.sh reads CLAIM_SQL
/// as one string literal); a unit test checks that they do.
#[cfg(test)]
const UNBLOCKED: &str = "(NOT e.ordered OR d.order_key IS NULL OR (NOT EXISTS (
            SELECT FROM (SELECT p.status FROM webhook.delivery p
                         WHERE p.subscription_id = d.subscription_id AND p.order_key = d.order_key
                           AND p.id < d.id AND octet_length(p.status) > 0
                         ORDER BY p.id DESC LIMIT 1) p
            WHERE p.status IN ('pending', 'delivering', 'batched'))
          AND (d.order_key_old IS NULL OR NOT EXISTS (
            SELECT FROM (SELECT p.status FROM webhook.delivery p
                         WHERE p.subscription_id = d.subscription_id AND p.order_key = d.order_key_old
                           AND p.id < d.id AND octet_length(p.status) > 0
                         ORDER BY p.id DESC LIMIT 1) p
            WHERE p.status IN ('pending', 'delivering', 'batched')))))";

const CLAIM_SQL: &str = "
WITH endpoints AS (
    -- Enabled endpoints, each with how many requests it may start (no endpoint gets more than
    -- $3 in flight; $4/$5: what each already has) and its cursor ($6/$7/$8: the last row it
    -- claimed). On an ordered endpoint a row its key held back may be left behind the
    -- cursor: it is found when the cursor is dropped (a short scan, or the periodic rescan).
    SELECT e.id, e.batch_size, e.ordering = 'key' AS ordered, c.after_at, c.after_id,
           greatest(0, least($1, $3 - coalesce(b.n, 0))) AS allowance
    FROM webhook.endpoint e
    LEFT JOIN unnest($4::int8[], $5::int4[]) AS b(endpoint_id, n) ON b.endpoint_id = e.id
    LEFT JOIN unnest($6::int8[], $7::timestamptz[], $8::int8[]) AS c(endpoint_id, after_at, after_id)
           ON c.endpoint_id = e.id
    WHERE e.enabled
), due AS (
    -- Per endpoint, through delivery_due: a disabled endpoint's backlog is never scanned. Each
    -- scan starts after its endpoint's cursor, so it does not walk the index entries that claimed
    -- and delivered rows leave behind until VACUUM. A census endpoint reads batch_size rows for
    -- each request it may start.
    SELECT d.*, e.allowance, e.batch_size
    FROM endpoints e
    CROSS JOIN LATERAL (
        SELECT d.id, d.endpoint_id, d.status, d.attempts, d.cycle_start, d.next_attempt_at,
               d.message_id, d.subscription_id, d.table_name, d.sync_run_id, d.payload
        FROM webhook.delivery d
        WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'delivering')
          AND d.next_attempt_at <= now()
          AND (d.next_attempt_at, d.id) > (coalesce(e.after_at, '-infinity'), coalesce(e.after_id, 0))
          AND (NOT e.ordered OR d.order_key IS NULL OR (NOT EXISTS (
            SELECT FROM (SELECT p.status FROM webhook.delivery p
                         WHERE p.subscription_id = d.subscription_id AND p.order_key = d.order_key
                           AND p.id < d.id AND octet_length(p.status) > 0
                         ORDER BY p.id DESC LIMIT 1) p
            WHERE p.status IN ('pending', 'delivering', 'batched'))
          AND (d.order_key_old IS NULL OR NOT EXISTS (
            SELECT FROM (SELECT p.status FROM webhook.delivery p
                         WHERE p.subscription_id = d.subscription_id AND p.order_key = d.order_key_old
                           AND p.id < d.id AND octet_length(p.status) > 0
                         ORDER BY p.id DESC LIMIT 1) p
            WHERE p.status IN ('pending', 'delivering', 'batched')))))
        ORDER BY d.next_attempt_at, d.id
        LIMIT e.allowance * e.batch_size
        FOR UPDATE SKIP LOCKED
    ) d
), per_endpoint AS (
    -- Counted in requests: a row that is a message already (a rownd change, a census message
    -- being retried) is one; a census change still to be batched is 1/batch_size of one.
    SELECT due.*, sum(CASE WHEN due.message_id IS NULL THEN 1.0 / due.batch_size ELSE 1 END)
                  OVER (PARTITION BY due.endpoint_id ORDER BY due.next_attempt_at, due.id) AS requests
    FROM due
), overall AS (
    SELECT p.*, sum(CASE WHEN p.message_id IS NULL THEN 1.0 / p.batch_size ELSE 1 END)
                OVER (ORDER BY p.next_attempt_at, p.id) AS total
    FROM per_endpoint p WHERE p.requests <= p.allowance
), taken AS (
    -- Oldest due first, at most $1 requests in all.
    SELECT o.* FROM overall o WHERE o.total <= $1
), claimed AS (
    -- Messages are sent as they are. By primary key: rows `due` locked cannot change before
    -- this update. Census changes are batched by the worker (FORM_SQL), in this transaction.
    UPDATE webhook.delivery d
    SET status = 'delivering', attempts = d.attempts + 1,
        next_attempt_at = now() + $2 * interval '1 millisecond'
    WHERE d.id = ANY (ARRAY(SELECT t.id FROM taken t WHERE t.message_id IS NOT NULL))
    RETURNING d.id, d.attempts
), lost AS (
    -- A row still `delivering` had its lease expire: its attempt never got an outcome.
    INSERT INTO webhook.attempt (delivery_id, attempt, started_at, error)
    SELECT id, attempts, now(),
           'no outcome recorded: the worker stopped during this attempt and its lease expired'
    FROM taken WHERE status = 'delivering' AND message_id IS NOT NULL
    ON CONFLICT DO NOTHING
)
SELECT t.id, t.endpoint_id, t.message_id, coalesce(c.attempts, t.attempts) AS attempts,
       t.cycle_start, t.payload, t.subscription_id, t.table_name, t.sync_run_id, t.batch_size,
       t.next_attempt_at AS was_due
FROM taken t LEFT JOIN claimed c ON c.id = t.id
ORDER BY t.next_attempt_at, t.id";

// Census changes the claim locked become messages: one new row per message (in `delivering`,
// attempted once, leased: it is sent now), carrying its body and webhook-id, and its changes
// `batched` into it ($9: the changes, $10: the message of each, numbered from 1). The changes are
// reached by primary key (`id = ANY`); each finds its message by subscript, not by a join.
const FORM_SQL: &str = "
WITH b AS (
    SELECT nextval('webhook.delivery_id_seq') AS id, b.*
    FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::int8[], $8::int4[])
        WITH ORDINALITY AS b(endpoint_id, subscription_id, table_name, operation, message_id,
                             payload, sync_run_id, records, n)
), messages AS (
    INSERT INTO webhook.delivery (id, endpoint_id, subscription_id, table_name, operation, payload,
                                  status, attempts, next_attempt_at, message_id, records,
                                  sync_run_id)
    SELECT b.id, b.endpoint_id, b.subscription_id, b.table_name, b.operation, b.payload,
           'delivering', 1, now() + $11 * interval '1 millisecond', b.message_id, b.records,
           b.sync_run_id
    FROM b
), members AS (
    UPDATE webhook.delivery d
    SET status = 'batched', batch_id = (SELECT array_agg(b.id ORDER BY b.n) FROM b)[c.n],
        message_id = ($5::text[])[c.n]
    FROM unnest($9::int8[], $10::int8[]) AS c(id, n)
    WHERE d.id = ANY ($9) AND d.id = c.id
)
SELECT b.id FROM b ORDER BY b.n";

// The queue is reached by primary key only (`id = ANY($1)`, see PLANNER_SETTINGS). An outcome
// updates its delivery only while the delivery is still on the outcome's attempt: every claim
// increments `attempts`, and only a claim moves a delivery into `delivering`, so that guard
// alone says the delivery is still the one sent. (A test of `status` here would make the partial
// index delivery_due a candidate.) Each outcome carries the delivery's next status, the wait
// before a retry (NULL: none) and whether it was delivered; attempts are recorded for the
// outcomes that were applied.
// (`event` is events::IS_EVENT_SQL, spelled out: tests/isolation/run.sh reads this text.)
const RECORD_SQL: &str = "
WITH r AS (
    SELECT * FROM unnest($1::int8[], $2::int4[], $3::float8[], $4::float8[], $5::int4[],
                         $6::text[], $7::text[], $8::float8[], $9::bool[], $10::text[])
        AS r(id, attempt, started, duration_ms, status_code, error, status, retry_in_ms,
             delivered, body)
), recorded AS (
    UPDATE webhook.delivery d SET
        (status, next_attempt_at, last_status_code, last_error, delivered_at) = (
            SELECT r.status,
                   coalesce(now() + r.retry_in_ms * interval '1 millisecond', d.next_attempt_at),
                   r.status_code,
                   r.error,
                   CASE WHEN r.delivered THEN now() ELSE d.delivered_at END
            FROM r WHERE r.id = d.id AND r.attempt = d.attempts)
    WHERE d.id = ANY ($1) AND (d.id, d.attempts) = ANY (ARRAY(SELECT (r.id, r.attempt) FROM r))
    RETURNING d.id, d.attempts, d.endpoint_id, d.status, d.message_id, d.table_name,
              d.last_status_code, d.last_error, position('.' in d.operation) > 0 AS event,
              d.sync_run_id, d.records
), runs AS (
    -- A sync run's rows delivered and dead-lettered, counted as their messages end (a census
    -- message counts its records).
    UPDATE webhook.sync_run s
    SET rows_sent = s.rows_sent + x.sent, rows_failed = s.rows_failed + x.failed
    FROM (SELECT c.sync_run_id,
                 coalesce(sum(coalesce(c.records, 1)) FILTER (WHERE c.status = 'delivered'), 0) AS sent,
                 coalesce(sum(coalesce(c.records, 1)) FILTER (WHERE c.status = 'failed'), 0) AS failed
          FROM recorded c WHERE c.sync_run_id IS NOT NULL GROUP BY c.sync_run_id) x
    WHERE s.id = x.sync_run_id
), attempts AS (
    INSERT INTO webhook.attempt
        (delivery_id, attempt, started_at, duration_ms, status_code, error, response_body)
    SELECT r.id, r.attempt, to_timestamp(r.started), r.duration_ms, r.status_code, r.error, r.body
    FROM r WHERE (r.id, r.attempt) = ANY (ARRAY(SELECT (c.id, c.attempts) FROM recorded c))
    ON CONFLICT DO NOTHING
), released AS (
    -- A finished census message of an ordered endpoint releases its changes' keys: a key's
    -- latest keyed delivery is then finished or unfinished by its own status (UNBLOCKED).
    UPDATE webhook.delivery c SET order_key = NULL, order_key_old = NULL
    WHERE c.status = 'batched'
      AND c.batch_id = ANY (ARRAY(
          SELECT m.id FROM recorded m JOIN webhook.endpoint e ON e.id = m.endpoint_id
          WHERE m.records IS NOT NULL AND m.status IN ('delivered', 'failed')
            AND e.ordering = 'key'))
      AND coalesce(c.order_key, c.order_key_old) IS NOT NULL
)
-- The outcomes applied, for endpoint health and events: event deliveries are marked (they
-- never count toward health or raise events), dead letters carry what delivery.failed says.
SELECT c.id, c.event, c.status = 'failed' AS dead, c.message_id, e.name AS endpoint,
       c.table_name, c.last_status_code, c.last_error
FROM recorded c LEFT JOIN webhook.endpoint e ON e.id = c.endpoint_id";

// The endpoints an outcome batch changes, locked (in id order: workers never deadlock) and as
// they are now, with how long each has been failing and how long its alert has been open.
const HEALTH_STATE_SQL: &str = "
SELECT e.id, e.name, e.consecutive_failures, e.enabled, e.alert_raised_at IS NOT NULL AS raised,
       extract(epoch FROM now() - e.failing_since)::float8 AS failing_secs,
       to_char(e.failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS failing_since
FROM webhook.endpoint e WHERE e.id = ANY($1)
ORDER BY e.id
FOR UPDATE";

// Each endpoint's new health, decided by `health::decide` ($5/$6: 'now', 'clear' or 'keep').
const HEALTH_SQL: &str = "
UPDATE webhook.endpoint e SET
    consecutive_failures = u.consecutive_failures,
    last_success_at = CASE WHEN u.succeeded THEN now() ELSE e.last_success_at END,
    last_failure_at = CASE WHEN u.failed THEN now() ELSE e.last_failure_at END,
    failing_since = CASE u.failing_since WHEN 'now' THEN now() WHEN 'clear' THEN NULL
                                         ELSE e.failing_since END,
    alert_raised_at = CASE u.alert WHEN 'now' THEN now() WHEN 'clear' THEN NULL
                                   ELSE e.alert_raised_at END,
    enabled = e.enabled AND NOT u.disable
FROM unnest($1::int8[], $2::bool[], $3::int4[], $4::bool[], $5::text[], $6::text[], $7::bool[])
    AS u(id, succeeded, consecutive_failures, failed, failing_since, alert, disable)
WHERE e.id = u.id AND e.id = ANY($1)";

// Rows an ordered endpoint's keys hold back are not due: their head's time is.
const NEXT_DUE_SQL: &str = "
SELECT extract(epoch FROM min(d.next_attempt_at) - now())::float8
FROM (SELECT e.id, e.ordering = 'key' AS ordered FROM webhook.endpoint e WHERE e.enabled) e
CROSS JOIN LATERAL (
    SELECT d.next_attempt_at FROM webhook.delivery d
    WHERE d.endpoint_id = e.id AND d.status IN ('pending', 'delivering')
      AND (NOT e.ordered OR d.order_key IS NULL OR (NOT EXISTS (
            SELECT FROM (SELECT p.status FROM webhook.delivery p
                         WHERE p.subscription_id = d.subscription_id AND p.order_key = d.order_key
                           AND p.id < d.id AND octet_length(p.status) > 0
                         ORDER BY p.id DESC LIMIT 1) p
            WHERE p.status IN ('pending', 'delivering', 'batched'))
          AND (d.order_key_old IS NULL OR NOT EXISTS (
            SELECT FROM (SELECT p.status FROM webhook.delivery p
                         WHERE p.subscription_id = d.subscription_id AND p.order_key = d.order_key_old
                           AND p.id < d.id AND octet_length(p.status) > 0
                         ORDER BY p.id DESC LIMIT 1) p
            WHERE p.status IN ('pending', 'delivering', 'batched')))))
    ORDER BY d.next_attempt_at LIMIT 1
) d";

const VERSION_SQL: &str =
    "SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'webhook'";

// Oldest first through delivery_delivered (the only index in that order).
static RETENTION_SQL: LazyLock<String> = LazyLock::new(|| {
    delivery::delete_sql(
        "SELECT id FROM webhook.delivery
         WHERE status = 'delivered' AND delivered_at < now() - $1 * interval '1 second'
         ORDER BY delivered_at
         LIMIT $2",
    )
});

static DESTINATIONS_SQL: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {DESTINATION_COLUMNS} FROM webhook.endpoint WHERE id = ANY($1)")
});

/// A statement's text and its parameters' types.
type Statement = (&'static str, &'static [PgBuiltInOids]);
use pgrx::pg_sys::BuiltinOid::{
    BOOLARRAYOID, FLOAT8ARRAYOID, FLOAT8OID, INT4ARRAYOID, INT4OID, INT8ARRAYOID, INT8OID,
    TEXTARRAYOID, TIMESTAMPTZARRAYOID,
};
const CLAIM: Statement = (
    CLAIM_SQL,
    &[
        INT8OID,
        FLOAT8OID,
        INT4OID,
        INT8ARRAYOID,
        INT4ARRAYOID,
        INT8ARRAYOID,
        TIMESTAMPTZARRAYOID,
        INT8ARRAYOID,
    ],
);
const RECORD: Statement = (
    RECORD_SQL,
    &[
        INT8ARRAYOID,
        INT4ARRAYOID,
        FLOAT8ARRAYOID,
        FLOAT8ARRAYOID,
        INT4ARRAYOID,
        TEXTARRAYOID,
        TEXTARRAYOID,
        FLOAT8ARRAYOID,
        BOOLARRAYOID,
        TEXTARRAYOID,
    ],
);
const HEALTH_STATE: Statement = (HEALTH_STATE_SQL, &[INT8ARRAYOID]);
const HEALTH: Statement = (
    HEALTH_SQL,
    &[
        INT8ARRAYOID,
        BOOLARRAYOID,
        INT4ARRAYOID,
        BOOLARRAYOID,
        TEXTARRAYOID,
        TEXTARRAYOID,
        BOOLARRAYOID,
    ],
);
const FORM: Statement = (
    FORM_SQL,
    &[
        INT8ARRAYOID,
        INT8ARRAYOID,
        TEXTARRAYOID,
        TEXTARRAYOID,
        TEXTARRAYOID,
        TEXTARRAYOID,
        INT8ARRAYOID,
        INT4ARRAYOID,
        INT8ARRAYOID,
        INT8ARRAYOID,
        FLOAT8OID,
    ],
);
const NEXT_DUE: Statement = (NEXT_DUE_SQL, &[]);
fn destinations() -> Statement {
    (DESTINATIONS_SQL.as_str(), &[INT8ARRAYOID])
}
fn retention() -> Statement {
    (RETENTION_SQL.as_str(), &[INT4OID, INT8OID])
}

/// The worker's statements, parsed and planned once per worker (the claim runs hundreds of
/// times a second under load; planning it each time cost more than running it).
struct Statements {
    claim: OwnedPreparedStatement,
    form: OwnedPreparedStatement,
    destinations: OwnedPreparedStatement,
    record: OwnedPreparedStatement,
    health_state: OwnedPreparedStatement,
    health: OwnedPreparedStatement,
    next_due: OwnedPreparedStatement,
    retention: OwnedPreparedStatement,
}

thread_local! {
    static STATEMENTS: RefCell<Option<Rc<Statements>>> = const { RefCell::new(None) };
}

/// Prepared on first use, inside the caller's transaction, once the extension exists.
fn statements() -> Result<Rc<Statements>> {
    if let Some(s) = STATEMENTS.with(|s| s.borrow().clone()) {
        return Ok(s);
    }
    debug_assert!(RECORD_SQL.contains(crate::events::IS_EVENT_SQL));
    let prepared = Spi::connect(|c| -> Result<Statements> {
        let types =
            |args: &[PgBuiltInOids]| args.iter().map(|t| PgOid::BuiltIn(*t)).collect::<Vec<_>>();
        let write = |(sql, args): Statement| -> Result<OwnedPreparedStatement> {
            Ok(c.prepare_mut(sql, &types(args))?.keep())
        };
        let read = |(sql, args): Statement| -> Result<OwnedPreparedStatement> {
            Ok(c.prepare(sql, &types(args))?.keep())
        };
        Ok(Statements {
            claim: write(CLAIM)?,
            form: write(FORM)?,
            destinations: read(destinations())?,
            record: write(RECORD)?,
            health_state: write(HEALTH_STATE)?,
            health: write(HEALTH)?,
            next_due: read(NEXT_DUE)?,
            retention: write(retention())?,
        })
    })?;
    let prepared = Rc::new(prepared);
    STATEMENTS.with(|s| *s.borrow_mut() = Some(prepared.clone()));
    Ok(prepared)
}

/// The installed schema's version, if the extension is created in this database.
pub fn schema_version() -> Result<Option<String>> {
    Spi::connect(|c| {
        let rows = c.select(VERSION_SQL, None, &[])?;
        if rows.is_empty() {
            return Ok(None);
        }
        Ok(rows.first().get_one::<String>()?)
    })
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

    /// The endpoints with requests in flight, and how many each has (the claim's $4 and $5).
    fn busy(&self) -> (Vec<i64>, Vec<i32>) {
        self.in_flight
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(e, n)| (*e, *n as i32))
            .unzip()
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

    /// The cursors as the claim's $6, $7 and $8.
    fn as_arrays(&self) -> (Vec<i64>, Vec<TimestampWithTimeZone>, Vec<i64>) {
        let mut arrays = (Vec::new(), Vec::new(), Vec::new());
        for (endpoint, (at, id)) in &self.0 {
            arrays.0.push(*endpoint);
            arrays.1.push(*at);
            arrays.2.push(*id);
        }
        arrays
    }

    /// Move an endpoint's cursor forward to a claimed row.
    fn advance(&mut self, endpoint: i64, at: TimestampWithTimeZone, id: i64) {
        let cursor = self.0.entry(endpoint).or_insert((at, id));
        if (at, id) > *cursor {
            *cursor = (at, id);
        }
    }
}

/// One row the claim returned: a message to send (`message_id` set; claimed), or a census
/// change to batch (locked, not yet changed).
struct Claimed {
    id: i64,
    endpoint_id: i64,
    message_id: Option<String>,
    attempts: i32,
    cycle_start: i32,
    payload: String,
    subscription_id: Option<i64>,
    table_name: Option<String>,
    sync_run_id: Option<i64>,
    batch_size: i32,
    was_due: TimestampWithTimeZone,
}

impl Claimed {
    fn read(row: &pgrx::spi::SpiHeapTupleData) -> Result<Claimed> {
        Ok(Claimed {
            id: not_null(row, "id")?,
            endpoint_id: not_null(row, "endpoint_id")?,
            message_id: row.get_by_name("message_id")?,
            attempts: not_null(row, "attempts")?,
            cycle_start: not_null(row, "cycle_start")?,
            payload: not_null(row, "payload")?,
            subscription_id: row.get_by_name("subscription_id")?,
            table_name: row.get_by_name("table_name")?,
            sync_run_id: row.get_by_name("sync_run_id")?,
            batch_size: not_null(row, "batch_size")?,
            was_due: not_null(row, "was_due")?,
        })
    }
}

/// A job before its destination is known.
struct Send {
    delivery_id: i64,
    endpoint_id: i64,
    message_id: String,
    attempt: i32,
    attempt_in_cycle: i32,
    body: String,
}

/// Census messages to form (FORM_SQL's arrays, one entry per message).
#[derive(Default)]
struct Batches {
    endpoint_ids: Vec<i64>,
    subscription_ids: Vec<Option<i64>>,
    table_names: Vec<Option<String>>,
    operations: Vec<String>,
    message_ids: Vec<String>,
    bodies: Vec<String>,
    sync_run_ids: Vec<Option<i64>>,
    records: Vec<i32>,
    /// Every message's changes, and the message (numbered from 1) of each.
    members: Vec<i64>,
    member_of: Vec<i64>,
}

impl Batches {
    fn add(&mut self, rows: &[Claimed], members: &[usize], message: message::Planned) {
        let head = &rows[members[0]];
        self.endpoint_ids.push(head.endpoint_id);
        self.subscription_ids.push(head.subscription_id);
        self.table_names.push(head.table_name.clone());
        self.operations.push(message.operation);
        self.message_ids.push(message::new_id());
        self.bodies.push(message.body);
        self.sync_run_ids.push(head.sync_run_id);
        self.records.push(members.len() as i32);
        self.members.extend(members.iter().map(|&i| rows[i].id));
        let number = self.records.len() as i64;
        self.member_of.extend(members.iter().map(|_| number));
    }
}

/// Group each endpoint's census changes into messages, within what the endpoint and the whole
/// claim may still start (`free`); marks the rows it batches in `taken`.
fn plan_batches(
    rows: &[Claimed],
    taken: &mut [bool],
    requests: &mut HashMap<i64, i64>,
    caps: &Caps,
    limit: i64,
    mut free: i64,
) -> Batches {
    let mut per_endpoint: Vec<(i64, Vec<usize>)> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        if row.message_id.is_some() {
            continue;
        }
        match per_endpoint.iter_mut().find(|(e, _)| *e == row.endpoint_id) {
            Some((_, changes)) => changes.push(i),
            None => per_endpoint.push((row.endpoint_id, vec![i])),
        }
    }
    let mut batches = Batches::default();
    for (endpoint, indexes) in per_endpoint {
        let started = requests.get(&endpoint).copied().unwrap_or(0);
        let budget = (caps.allowance(endpoint, limit) - started).min(free).max(0);
        let changes: Vec<message::Change> = indexes
            .iter()
            .map(|&i| message::Change {
                stream: (
                    rows[i].subscription_id,
                    rows[i].table_name.as_deref(),
                    rows[i].sync_run_id,
                ),
                id: rows[i].id,
                payload: &rows[i].payload,
            })
            .collect();
        let batch_size = rows[indexes[0]].batch_size as usize;
        let planned = message::plan(&changes, batch_size, budget as usize);
        free -= planned.len() as i64;
        *requests.entry(endpoint).or_default() += planned.len() as i64;
        for message in planned {
            let members: Vec<usize> = message.members.iter().map(|&k| indexes[k]).collect();
            for &i in &members {
                taken[i] = true;
            }
            batches.add(rows, &members, message);
        }
    }
    batches
}

fn as_strs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

/// Insert the planned census messages and batch their changes; returns the messages' jobs.
fn form(
    client: &mut SpiClient,
    statements: &Statements,
    batches: Batches,
    lease: Duration,
) -> Result<Vec<Send>> {
    if batches.message_ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = client
        .update(
            &statements.form,
            None,
            &[
                batches.endpoint_ids.clone().into(),
                batches.subscription_ids.into(),
                batches.table_names.into(),
                batches.operations.into(),
                as_strs(&batches.message_ids).into(),
                as_strs(&batches.bodies).into(),
                batches.sync_run_ids.into(),
                batches.records.into(),
                batches.members.into(),
                batches.member_of.into(),
                (lease.as_millis() as f64).into(),
            ],
        )?
        .map(|row| not_null(&row, "id"))
        .collect::<Result<_>>()?;
    Ok(ids
        .into_iter()
        .zip(batches.endpoint_ids)
        .zip(batches.message_ids.into_iter().zip(batches.bodies))
        .map(|((delivery_id, endpoint_id), (message_id, body))| Send {
            delivery_id,
            endpoint_id,
            message_id,
            attempt: 1,
            attempt_in_cycle: 1,
            body,
        })
        .collect())
}

/// Claim up to `limit` requests' worth of due deliveries: messages (rownd changes, census
/// messages due again) as they are, census changes grouped into new messages. Each becomes a
/// job leased for `lease`.
pub fn claim(
    limit: i64,
    lease: Duration,
    timeout: Duration,
    caps: &Caps,
    cursors: &mut Cursors,
) -> Result<Vec<Job>> {
    let (busy_ids, busy_counts) = caps.busy();
    let (cursor_ids, cursor_at, cursor_last) = cursors.as_arrays();
    let statements = statements()?;
    Spi::connect_mut(|client| {
        let args = [
            limit.into(),
            (lease.as_millis() as f64).into(),
            caps.per_endpoint.into(),
            busy_ids.into(),
            busy_counts.into(),
            cursor_ids.into(),
            cursor_at.into(),
            cursor_last.into(),
        ];
        let rows = client
            .update(&statements.claim, None, &args)?
            .map(|row| Claimed::read(&row))
            .collect::<Result<Vec<_>>>()?;
        // Requests started per endpoint: first the messages the claim took.
        let mut requests: HashMap<i64, i64> = HashMap::new();
        let mut taken: Vec<bool> = rows.iter().map(|r| r.message_id.is_some()).collect();
        let mut sends = Vec::new();
        for row in rows.iter().filter(|r| r.message_id.is_some()) {
            *requests.entry(row.endpoint_id).or_default() += 1;
            sends.push(Send {
                delivery_id: row.id,
                endpoint_id: row.endpoint_id,
                message_id: row.message_id.clone().unwrap_or_default(),
                attempt: row.attempts,
                attempt_in_cycle: row.attempts - row.cycle_start,
                body: row.payload.clone(),
            });
        }
        let free = limit - sends.len() as i64;
        let batches = plan_batches(&rows, &mut taken, &mut requests, caps, limit, free);
        sends.extend(form(client, &statements, batches, lease)?);
        // Each endpoint's cursor moves over the rows taken, up to the first one left queued.
        let mut blocked: Vec<i64> = Vec::new();
        for (row, taken) in rows.iter().zip(&taken) {
            if blocked.contains(&row.endpoint_id) {
                continue;
            }
            if *taken {
                cursors.advance(row.endpoint_id, row.was_due, row.id);
            } else {
                blocked.push(row.endpoint_id);
            }
        }
        // An endpoint that started fewer requests than it was allowed has nothing more due
        // after its cursor: its next claim scans from the start.
        cursors.0.retain(|endpoint, _| {
            requests.get(endpoint).copied().unwrap_or(0) >= caps.allowance(*endpoint, limit)
        });
        if sends.is_empty() {
            return Ok(Vec::new());
        }
        let endpoints: Vec<i64> = requests.keys().copied().collect();
        let destinations = load_destinations(client, &statements, endpoints.into_iter())?;
        Ok(sends
            .into_iter()
            .filter_map(|s| {
                Some(Job {
                    delivery_id: s.delivery_id,
                    message_id: s.message_id,
                    attempt: s.attempt,
                    attempt_in_cycle: s.attempt_in_cycle,
                    destination: destinations.get(&s.endpoint_id)?.clone(),
                    body: s.body,
                    timeout,
                })
            })
            .collect())
    })
}

/// The destinations of the given endpoints, by endpoint id.
fn load_destinations(
    client: &SpiClient,
    statements: &Statements,
    endpoints: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, Arc<Destination>>> {
    let ids: Vec<i64> = endpoints.collect();
    client
        .select(&statements.destinations, None, &[ids.into()])?
        .map(|row| {
            let dest = Destination::from_row(&row)?;
            Ok((dest.endpoint_id, Arc::new(dest)))
        })
        .collect()
}

/// Seconds until the next delivery falls due (negative when overdue), if any is queued.
pub fn next_due() -> Result<Option<f64>> {
    let statements = statements()?;
    Spi::connect(|client| {
        Ok(client
            .select(&statements.next_due, None, &[])?
            .first()
            .get_one::<f64>()?)
    })
}

/// Record finished attempts: one attempt row each, the delivery's next state, endpoint health
/// (alerts, disabling) and the events they raise, `delivery.failed` for dead letters. Event
/// deliveries' outcomes are recorded like any other but raise nothing.
pub fn record(outcomes: &[Outcome], delays: &[Duration]) -> Result<()> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut attempts = Vec::new();
    let mut started = Vec::new();
    let mut durations = Vec::new();
    let mut codes: Vec<Option<i32>> = Vec::new();
    let mut errors: Vec<Option<String>> = Vec::new();
    let mut statuses = Vec::new();
    let mut retry_in_ms: Vec<Option<f64>> = Vec::new();
    let mut delivered = Vec::new();
    let mut bodies: Vec<Option<String>> = Vec::new();
    for o in outcomes {
        let r = &o.result;
        let next = schedule::next_step(r.success(), o.attempt_in_cycle, delays, r.retry_after);
        ids.push(o.delivery_id);
        attempts.push(o.attempt);
        started.push(r.started_at);
        durations.push(r.duration.as_secs_f64() * 1000.0);
        codes.push(r.status.map(i32::from));
        errors.push(r.error.clone());
        statuses.push(next.status().as_sql());
        retry_in_ms.push(next.retry_in().map(|d| d.as_secs_f64() * 1000.0));
        delivered.push(next.status() == Status::Delivered);
        bodies.push(r.response_body.as_ref().map(|b| b.replace('\0', "")));
    }
    let statements = statements()?;
    Spi::connect_mut(|client| {
        let applied = client
            .update(
                &statements.record,
                None,
                &[
                    ids.into(),
                    attempts.into(),
                    started.into(),
                    durations.into(),
                    codes.into(),
                    errors.into(),
                    statuses.into(),
                    retry_in_ms.into(),
                    delivered.into(),
                    bodies.into(),
                ],
            )?
            .map(|row| Applied::read(&row))
            .collect::<Result<Vec<_>>>()?;
        // Health counts the applied outcomes of row deliveries, per endpoint in completion order.
        let counted: HashMap<i64, &Applied> = applied
            .iter()
            .filter(|a| !a.event)
            .map(|a| (a.id, a))
            .collect();
        let mut batches: Vec<(i64, health::Batch)> = Vec::new();
        for o in outcomes
            .iter()
            .filter(|o| counted.contains_key(&o.delivery_id))
        {
            let i = match batches.iter().position(|(e, _)| *e == o.endpoint_id) {
                Some(i) => i,
                None => {
                    batches.push((o.endpoint_id, health::Batch::default()));
                    batches.len() - 1
                }
            };
            let r = &o.result;
            batches[i]
                .1
                .add(r.success(), r.status.map(i32::from), r.error.clone());
        }
        update_health(client, &statements, batches)?;
        for dead in applied.iter().filter(|a| a.dead && !a.event) {
            let data = serde_json::json!({
                "delivery_id": dead.id,
                "webhook_id": dead.message_id,
                "endpoint": dead.endpoint,
                "table": dead.table_name,
                "last_status_code": dead.last_status_code,
                "last_error": dead.last_error,
            });
            events::emit(client, events::DELIVERY_FAILED, data, None)?;
        }
        Ok(())
    })
}

/// An outcome RECORD_SQL applied.
struct Applied {
    id: i64,
    event: bool,
    dead: bool,
    message_id: Option<String>,
    endpoint: Option<String>,
    table_name: Option<String>,
    last_status_code: Option<i32>,
    last_error: Option<String>,
}

impl Applied {
    fn read(row: &pgrx::spi::SpiHeapTupleData) -> Result<Applied> {
        Ok(Applied {
            id: not_null(row, "id")?,
            event: not_null(row, "event")?,
            dead: not_null(row, "dead")?,
            message_id: row.get_by_name("message_id")?,
            endpoint: row.get_by_name("endpoint")?,
            table_name: row.get_by_name("table_name")?,
            last_status_code: row.get_by_name("last_status_code")?,
            last_error: row.get_by_name("last_error")?,
        })
    }
}

/// Apply each endpoint's batch of outcomes to its health, and queue the events that raises.
fn update_health(
    client: &mut SpiClient,
    statements: &Statements,
    batches: Vec<(i64, health::Batch)>,
) -> Result<()> {
    if batches.is_empty() {
        return Ok(());
    }
    let endpoint_ids: Vec<i64> = batches.iter().map(|(e, _)| *e).collect();
    let states: HashMap<i64, health::State> = client
        .update(&statements.health_state, None, &[endpoint_ids.into()])?
        .map(|row| {
            Ok((
                not_null(&row, "id")?,
                health::State {
                    name: not_null(&row, "name")?,
                    consecutive_failures: not_null(&row, "consecutive_failures")?,
                    enabled: not_null(&row, "enabled")?,
                    raised: not_null(&row, "raised")?,
                    failing_secs: row.get_by_name("failing_secs")?,
                    failing_since: row.get_by_name("failing_since")?,
                },
            ))
        })
        .collect::<Result<_>>()?;
    let (threshold, disable_after) = (guc::alert_threshold(), guc::disable_after_secs());
    let mut columns: (Vec<i64>, Vec<bool>, Vec<i32>, Vec<bool>) = Default::default();
    let mut changes: (Vec<&str>, Vec<&str>, Vec<bool>) = Default::default();
    let mut raised = Vec::new();
    for (endpoint, batch) in &batches {
        // An endpoint dropped meanwhile has no health to keep.
        let Some(state) = states.get(endpoint) else {
            continue;
        };
        let d = health::decide(state, batch, threshold, disable_after);
        columns.0.push(*endpoint);
        columns.1.push(batch.succeeded);
        columns.2.push(d.consecutive_failures);
        columns.3.push(batch.failed);
        changes.0.push(d.failing_since.as_sql());
        changes.1.push(d.alert.as_sql());
        changes.2.push(d.disable);
        raised.extend(d.events.into_iter().map(|e| (*endpoint, e)));
    }
    client.update(
        &statements.health,
        None,
        &[
            columns.0.into(),
            columns.1.into(),
            columns.2.into(),
            columns.3.into(),
            changes.0.into(),
            changes.1.into(),
            changes.2.into(),
        ],
    )?;
    for (endpoint, (event_type, data)) in raised {
        events::emit(client, event_type, data, Some(endpoint))?;
    }
    Ok(())
}

/// Delete up to `limit` delivered deliveries older than `retention_secs`; returns how many.
pub fn purge_delivered(retention_secs: i32, limit: i64) -> Result<i64> {
    let statements = statements()?;
    Spi::connect_mut(|client| {
        Ok(client
            .update(
                &statements.retention,
                None,
                &[retention_secs.into(), limit.into()],
            )?
            .first()
            .get_one::<i64>()?
            .unwrap_or(0))
    })
}

/// The worker's plans do not depend on the queue's statistics: in every state that `pg_class`
/// and `pg_statistic` can be in, each statement reaches the queue only through an index
/// condition its SQL names, so it never reads delivered rows it has no use for.
#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Per statement, the indexes of `webhook.delivery` it may scan, each with a fragment its
    /// index condition must contain (a scan with no condition would read the whole index).
    fn expected() -> Vec<(
        &'static str,
        Statement,
        &'static [(&'static str, &'static str)],
    )> {
        let mut all = EXPECTED.to_vec();
        all.push((
            "retention",
            retention(),
            &[
                ("delivery_delivered", "delivered_at <"),
                ("delivery_pkey", "id = ANY"),
                ("delivery_batch", "batch_id = ANY"),
            ],
        ));
        all
    }

    const EXPECTED: &[(&str, Statement, &[(&str, &str)])] = &[
        (
            "claim",
            CLAIM,
            &[
                ("delivery_due", "endpoint_id = e.id"),
                ("delivery_pkey", "id = ANY"),
                ("delivery_order", "order_key = d"),
            ],
        ),
        ("form", FORM, &[("delivery_pkey", "id = ANY")]),
        (
            "record",
            RECORD,
            &[
                ("delivery_pkey", "id = ANY"),
                ("delivery_batch", "batch_id = ANY"),
            ],
        ),
        ("health_state", HEALTH_STATE, &[]),
        ("health", HEALTH, &[]),
        (
            "next_due",
            NEXT_DUE,
            &[
                ("delivery_due", "endpoint_id = e.id"),
                ("delivery_order", "order_key = d"),
            ],
        ),
    ];

    const FILL_PENDING: &str =
        "INSERT INTO webhook.delivery (endpoint_id, subscription_id, operation, payload, order_key)
        SELECT id, 1, 'data_insert', '{}', CASE WHEN g % 2 = 0 THEN g % 1000 END
        FROM webhook.endpoint, generate_series(1, 20000) g";
    const FILL_BATCHED: &str =
        "INSERT INTO webhook.delivery (endpoint_id, subscription_id, operation, payload, status, batch_id, order_key)
        SELECT id, 1, 'data_insert', '{}', 'batched', g / 100, g % 7 FROM webhook.endpoint, generate_series(1, 20000) g";
    const FILL_DELIVERED: &str =
        "INSERT INTO webhook.delivery (endpoint_id, operation, payload, status, delivered_at)
        SELECT id, 'data_insert', '{}', 'delivered', now() - interval '30 days'
        FROM webhook.endpoint, generate_series(1, 20000)";

    /// The generic plan the worker would run for `statement`, under the worker's settings.
    fn generic_plan(name: &str, (sql, args): Statement) -> Value {
        let types: Vec<String> = args
            .iter()
            .map(|t| {
                Spi::get_one::<String>(&format!("SELECT format_type({}, NULL)", *t as u32))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        let (params, nulls) = if args.is_empty() {
            (String::new(), String::new())
        } else {
            (
                format!("({})", types.join(", ")),
                format!("({})", vec!["NULL"; args.len()].join(", ")),
            )
        };
        Spi::connect_mut(|c| {
            c.update(&format!("PREPARE {name}{params} AS {sql}"), None, &[])
                .unwrap();
            let plan = c
                .update(
                    &format!("EXPLAIN (FORMAT JSON, COSTS OFF) EXECUTE {name}{nulls}"),
                    None,
                    &[],
                )
                .unwrap()
                .first()
                .get_one::<pgrx::Json>()
                .unwrap()
                .unwrap()
                .0;
            c.update(&format!("DEALLOCATE {name}"), None, &[]).unwrap();
            plan
        })
    }

    /// Every scan of the queue tables in `node` and below, checked against `allowed`.
    fn check_scans(context: &str, node: &Value, allowed: &[(&str, &str)]) {
        let kind = node["Node Type"].as_str().unwrap_or_default();
        let relation = node["Relation Name"].as_str().unwrap_or_default();
        if kind != "ModifyTable" && (relation == "delivery" || relation == "attempt") {
            let index = node["Index Name"].as_str().unwrap_or_default();
            let cond = node["Index Cond"].as_str().unwrap_or_default();
            let ok = kind.starts_with("Index")
                && !cond.is_empty()
                && (relation == "attempt"
                    || allowed
                        .iter()
                        .any(|(name, must)| index == *name && cond.contains(must)));
            assert!(
                ok,
                "{context}: {kind} on {relation} using {index:?} with condition {cond:?}; \
                 accepted: {allowed:?}\n{node:#}"
            );
        }
        for child in node["Plans"].as_array().into_iter().flatten() {
            check_scans(context, child, allowed);
        }
    }

    #[test]
    fn claim_and_next_due_hold_back_the_same_rows() {
        assert!(CLAIM_SQL.contains(UNBLOCKED));
        assert!(NEXT_DUE_SQL.contains(UNBLOCKED));
    }

    #[pg_test]
    fn record_marks_event_deliveries_as_events_does() {
        assert!(RECORD_SQL.contains(&format!("{} AS event", crate::events::IS_EVENT_SQL)));
    }

    #[pg_test]
    fn worker_plans_keep_to_their_indexes_whatever_the_statistics() {
        configure_session().unwrap();
        Spi::run(
            "INSERT INTO webhook.endpoint (name, url, secret, ordering)
             VALUES ('plans', 'http://127.0.0.1:9/', 'whsec_plans', 'key')",
        )
        .unwrap();
        let states: &[(&str, &[&str])] = &[
            ("as installed", &[]),
            (
                "analyzed empty",
                &["ANALYZE webhook.delivery, webhook.attempt"],
            ),
            (
                "full of delivered rows, analyzed",
                &[FILL_DELIVERED, FILL_BATCHED, "ANALYZE webhook.delivery"],
            ),
            (
                "mid-burst, analyzed",
                &[FILL_PENDING, "ANALYZE webhook.delivery"],
            ),
            (
                "analyzed while its rows were dead, then filled",
                &[
                    "DELETE FROM webhook.delivery",
                    "ANALYZE webhook.delivery",
                    FILL_PENDING,
                    FILL_DELIVERED,
                ],
            ),
            (
                "truncated, then filled",
                &["TRUNCATE webhook.delivery, webhook.attempt", FILL_PENDING],
            ),
        ];
        for (state, steps) in states {
            for step in *steps {
                Spi::run(step).unwrap();
            }
            for (name, statement, allowed) in expected() {
                let plan = generic_plan(name, statement);
                check_scans(&format!("{name}, queue {state}"), &plan[0]["Plan"], allowed);
            }
        }
    }
}
