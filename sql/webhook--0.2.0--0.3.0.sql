\echo Use "ALTER EXTENSION webhook UPDATE TO '0.3.0'" to load this file. \quit
-- webhook 0.2.0 -> 0.3.0. A fresh install of 0.3.0 (sql/schema.sql, sql/finalize.sql) gives the
-- same schema; tests/e2e/test_upgrade.py compares the two.

-- ---------------------------------------------------------------------------------------------
-- Filters, behaviours and the DDL guard (SPEC §2, §5)
-- ---------------------------------------------------------------------------------------------
ALTER TABLE webhook.subscription
    ADD COLUMN behavior text CHECK (behavior IN ('append', 'update_or_create', 'mirror')),
    ADD COLUMN changed text[],
    ADD COLUMN predicate text,
    ADD COLUMN predicate_node text,
    ADD COLUMN guard jsonb NOT NULL DEFAULT '[]';

-- The guard of the subscriptions 0.2.0 made: the columns their options name (0.2.0 had no
-- changed or predicate), as watch() records them.
UPDATE webhook.subscription s SET guard = coalesce((
    SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
               'column', a.attname::text, 'attnum', a.attnum::int4, 'type', a.atttypid::oid::int8,
               'options', n.options) ORDER BY a.attnum)
    FROM (SELECT x.col, pg_catalog.jsonb_agg(DISTINCT x.opt) AS options
          FROM (SELECT pg_catalog.unnest(s.columns) AS col, 'columns' AS opt
                UNION ALL SELECT pg_catalog.jsonb_object_keys(s.rename), 'rename'
                UNION ALL SELECT pg_catalog.unnest(s.redact), 'redact'
                UNION ALL SELECT pg_catalog.unnest(s.lookup), 'lookup'
                UNION ALL SELECT k.attname::text, 'lookup (the primary key)'
                          FROM pg_catalog.pg_index i
                          JOIN pg_catalog.pg_attribute k ON k.attrelid = i.indrelid
                                                        AND k.attnum = ANY (i.indkey)
                          WHERE i.indrelid = s.relid AND i.indisprimary AND s.lookup IS NULL
                UNION ALL SELECT s.visibility_column, 'visibility_column'
                          WHERE s.visibility_column IS NOT NULL) x
          GROUP BY x.col) n
    JOIN pg_catalog.pg_attribute a ON a.attrelid = s.relid AND a.attname = n.col
                                  AND NOT a.attisdropped), '[]');

-- watch() gains behavior; events now defaults to NULL (every event, or the behaviour's).
DROP FUNCTION webhook.watch(regclass, text, text[], text[], jsonb, text[], text[], text, text, text[], text);
CREATE FUNCTION webhook."watch"(
	"tbl" regclass,
	"endpoint" TEXT,
	"events" TEXT[] DEFAULT NULL,
	"columns" TEXT[] DEFAULT NULL,
	"rename" jsonb DEFAULT '{}',
	"redact" TEXT[] DEFAULT '{}',
	"lookup" TEXT[] DEFAULT NULL,
	"visibility_column" TEXT DEFAULT NULL,
	"name" TEXT DEFAULT NULL,
	"changed" TEXT[] DEFAULT NULL,
	"predicate" TEXT DEFAULT NULL,
	"behavior" TEXT DEFAULT NULL
) RETURNS bigint
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscribe_wrapper';
REVOKE ALL ON FUNCTION webhook.watch(regclass, text, text[], text[], jsonb, text[], text[], text, text, text[], text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.watch(regclass, text, text[], text[], jsonb, text[], text[], text, text, text[], text, text) TO webhook_admin;

CREATE FUNCTION webhook."_check_subscriptions"(
	"tables" oid[]
) RETURNS void
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'check_subscriptions_wrapper';
REVOKE ALL ON FUNCTION webhook._check_subscriptions(oid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook._check_subscriptions(oid[]) TO webhook_admin;

CREATE OR REPLACE VIEW webhook.subscriptions AS
SELECT s.id, e.name AS endpoint, s.relid AS table_name,
       coalesce(s.name, (SELECT (n.nspname::text || '.' || c.relname::text) COLLATE pg_catalog."default"
                         FROM pg_catalog.pg_class c
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE c.oid = s.relid)) AS name,
       s.events, s.columns, s.rename, s.redact, s.lookup, s.visibility_column, s.created_at,
       s.behavior, s.changed, s.predicate
FROM webhook.subscription s JOIN webhook.endpoint e ON e.id = s.endpoint_id;

CREATE OR REPLACE FUNCTION webhook._forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM webhook.subscription s
    WHERE s.relid::pg_catalog.oid OPERATOR(pg_catalog.=) ANY (
        SELECT d.objid FROM pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
          AND d.objsubid OPERATOR(pg_catalog.=) 0);
    -- Columns dropped by any command (DROP TYPE ... CASCADE too): the DDL guard decides.
    PERFORM webhook._check_subscriptions(ARRAY(
        SELECT DISTINCT d.objid FROM pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
          AND d.objsubid OPERATOR(pg_catalog.>) 0));
END
$$;

CREATE FUNCTION webhook._guard_subscriptions() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM webhook._check_subscriptions(ARRAY(
        SELECT DISTINCT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
        WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass));
END
$$;
REVOKE ALL ON FUNCTION webhook._guard_subscriptions() FROM PUBLIC;
CREATE EVENT TRIGGER webhook_guard_subscriptions ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION webhook._guard_subscriptions();

-- ---- Message ids and census batches (issue 12) ----------------------------------------------
-- Endpoints get batch_size: census endpoints send up to that many records per request (100 by
-- default), rownd ones one.
ALTER TABLE webhook.endpoint
    ADD COLUMN batch_size integer NOT NULL DEFAULT 1,
    ADD CONSTRAINT endpoint_batch_size_check
        CHECK (batch_size BETWEEN 1 AND 1000 AND (format = 'census' OR batch_size = 1));
UPDATE webhook.endpoint SET batch_size = 100 WHERE format = 'census';

-- Deliveries get a message id (the webhook-id), and census changes are batched into messages.
ALTER TABLE webhook.delivery
    DROP CONSTRAINT delivery_status_check,
    ADD CONSTRAINT delivery_status_check
        CHECK (status IN ('pending', 'delivering', 'delivered', 'failed', 'batched')),
    ADD COLUMN message_id text,
    ADD COLUMN batch_id bigint,
    ADD COLUMN records integer,
    ADD COLUMN sync_run_id bigint;
-- What 0.2.0 queued keeps the webhook-id it had, its delivery id, so that a retry or a
-- redelivery carries the id its receiver may have seen already (and rownd bodies their meta.id);
-- only census changes never attempted are left to be batched.
UPDATE webhook.delivery SET message_id = id::text
WHERE NOT (status = 'pending' AND attempts = 0 AND left(payload, 15) = '{"api_version":');
CREATE INDEX delivery_batch ON webhook.delivery (batch_id) WHERE status = 'batched';

-- alter_endpoint takes batch_size (create_endpoint too: with secret, below).
DROP FUNCTION webhook.alter_endpoint(text, text, text, jsonb, text, boolean, text);
CREATE FUNCTION webhook.alter_endpoint(
	"name" TEXT,
	"url" TEXT DEFAULT NULL,
	"method" TEXT DEFAULT NULL,
	"headers" jsonb DEFAULT NULL,
	"description" TEXT DEFAULT NULL,
	"enabled" bool DEFAULT NULL,
	"format" TEXT DEFAULT NULL,
	"batch_size" INT DEFAULT NULL
) RETURNS void
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'alter_endpoint_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.alter_endpoint(text, text, text, jsonb, text, boolean, text, int)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.alter_endpoint(text, text, text, jsonb, text, boolean, text, int)
    TO webhook_admin;

-- Views: deliveries shows the message id (a new column in the middle, so it is created again,
-- with its grant; endpoints, with batch_size, is created again below); a census change shows
-- its message's state.
DROP VIEW webhook.deliveries;
CREATE VIEW webhook.deliveries AS
SELECT d.id, d.message_id, e.name AS endpoint, d.table_name, d.operation, m.status, m.attempts,
       CASE WHEN m.status IN ('pending', 'delivering') THEN m.next_attempt_at END AS next_attempt_at,
       m.last_status_code, m.last_error, d.created_at, m.delivered_at, d.payload::jsonb AS payload
FROM webhook.delivery d
JOIN webhook.delivery m ON m.id = coalesce(d.batch_id, d.id)
LEFT JOIN webhook.endpoint e ON e.id = d.endpoint_id
WHERE d.records IS NULL;
GRANT SELECT ON webhook.deliveries TO webhook_admin;
CREATE OR REPLACE VIEW webhook.attempts AS
SELECT coalesce(c.id, a.delivery_id) AS delivery_id, a.attempt, a.started_at, a.duration_ms,
       a.status_code, a.error, a.response_body
FROM webhook.attempt a
LEFT JOIN webhook.delivery c ON c.batch_id = a.delivery_id AND c.status = 'batched';
CREATE OR REPLACE VIEW webhook.endpoint_stats AS
SELECT e.name AS endpoint,
       count(d.id) FILTER (WHERE m.status IN ('pending', 'delivering')) AS pending,
       count(d.id) FILTER (WHERE m.status = 'delivered') AS delivered,
       count(d.id) FILTER (WHERE m.status = 'failed') AS failed,
       e.consecutive_failures, e.last_success_at, e.last_failure_at
FROM webhook.endpoint e
LEFT JOIN webhook.delivery d ON d.endpoint_id = e.id AND d.records IS NULL
LEFT JOIN webhook.delivery m ON m.id = coalesce(d.batch_id, d.id)
GROUP BY e.id;

-- Issue 12, endpoints: several live secrets. 0.2.0 kept one previous secret in
-- webhook.endpoint (previous_secret, previous_secret_expires_at), so a second rotation within
-- the overlap cut the first secret off early; now every rotated-out secret signs until its own
-- expiry, from a table of its own. A previous secret still live is carried over.
CREATE TABLE webhook.previous_secret (
    endpoint_id bigint NOT NULL REFERENCES webhook.endpoint (id) ON DELETE CASCADE,
    secret      text NOT NULL,
    retired_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (endpoint_id, secret)
);
REVOKE ALL ON webhook.previous_secret FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('webhook.previous_secret', '');
INSERT INTO webhook.previous_secret (endpoint_id, secret, expires_at)
SELECT e.id, e.previous_secret, e.previous_secret_expires_at FROM webhook.endpoint e
WHERE e.previous_secret IS NOT NULL AND e.previous_secret_expires_at > now()
  AND e.previous_secret <> e.secret;

-- webhook.endpoints read the dropped columns; it gains rotation_overlap_until (before
-- created_at, so it is dropped and created again, with its grant).
DROP VIEW webhook.endpoints;
ALTER TABLE webhook.endpoint DROP COLUMN previous_secret, DROP COLUMN previous_secret_expires_at;
CREATE VIEW webhook.endpoints AS
SELECT e.name, e.url, e.method, e.headers, e.description, e.format, e.batch_size, e.enabled,
       p.until IS NOT NULL AS rotation_overlap, p.until AS rotation_overlap_until, e.created_at
FROM webhook.endpoint e
CROSS JOIN LATERAL (SELECT max(p.expires_at) AS until FROM webhook.previous_secret p
                    WHERE p.endpoint_id = e.id AND p.expires_at > now()) p;
REVOKE ALL ON webhook.endpoints FROM PUBLIC;
GRANT SELECT ON webhook.endpoints TO webhook_admin;

-- create_endpoint takes batch_size and a secret, rotate_secret a secret, drop_endpoint force. New argument lists
-- are new functions: the old ones go. Their C symbols are new as well (..._0_3_wrapper); the
-- library keeps the old symbols for the old definitions, which a server runs between
-- installing this build and ALTER EXTENSION webhook UPDATE.
DROP FUNCTION webhook.create_endpoint(text, text, text, jsonb, text, text);
CREATE FUNCTION webhook.create_endpoint(
	"name" TEXT,
	"url" TEXT,
	"method" TEXT DEFAULT 'POST',
	"headers" jsonb DEFAULT '{}',
	"description" TEXT DEFAULT NULL,
	"format" TEXT DEFAULT 'rownd',
	"batch_size" INT DEFAULT NULL,
	"secret" TEXT DEFAULT NULL
) RETURNS TEXT
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_endpoint_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.create_endpoint(text, text, text, jsonb, text, text, int, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.create_endpoint(text, text, text, jsonb, text, text, int, text) TO webhook_admin;

DROP FUNCTION webhook.rotate_secret(text);
CREATE FUNCTION webhook.rotate_secret(
	"name" TEXT,
	"secret" TEXT DEFAULT NULL
) RETURNS TEXT
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'rotate_secret_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.rotate_secret(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.rotate_secret(text, text) TO webhook_admin;

DROP FUNCTION webhook.drop_endpoint(text);
CREATE FUNCTION webhook.drop_endpoint(
	"name" TEXT,
	"force" bool DEFAULT false
) RETURNS void
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'drop_endpoint_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.drop_endpoint(text, bool) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.drop_endpoint(text, bool) TO webhook_admin;

-- ---- Sync runs (issue 14, SPEC §6) -----------------------------------------------------------
CREATE TABLE webhook.sync_run (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     bigint NOT NULL REFERENCES webhook.endpoint (id) ON DELETE CASCADE,
    subscription_id bigint,          -- no foreign key: unwatch must not wait for a run being read
    relid           oid NOT NULL,
    table_name      text NOT NULL,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'reading', 'sending', 'success', 'failed', 'cancelled')),
    rows_total      bigint,
    rows_queued     bigint NOT NULL DEFAULT 0,
    rows_sent       bigint NOT NULL DEFAULT 0,
    rows_failed     bigint NOT NULL DEFAULT 0,
    after_key       text[],
    triggered_at    timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    error           text,
    events_sent     integer NOT NULL DEFAULT 0,
    events_pending  bigint[] NOT NULL DEFAULT '{}'
);
REVOKE ALL ON webhook.sync_run FROM PUBLIC;
REVOKE ALL ON SEQUENCE webhook.sync_run_id_seq FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('webhook.sync_run', '');
CREATE VIEW webhook.sync_runs AS
SELECT r.id, e.name AS endpoint, r.table_name, r.status, r.rows_total, r.rows_sent, r.rows_failed,
       r.triggered_at, r.started_at, r.finished_at, r.error, r.rows_queued
FROM webhook.sync_run r JOIN webhook.endpoint e ON e.id = r.endpoint_id;
REVOKE ALL ON webhook.sync_runs FROM PUBLIC;
GRANT SELECT ON webhook.sync_runs TO webhook_admin;
CREATE FUNCTION webhook."sync"(
	"tbl" regclass,
	"endpoint" TEXT
) RETURNS bigint
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'sync_wrapper';
CREATE FUNCTION webhook."cancel_sync"(
	"run" bigint
) RETURNS void
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'cancel_sync_wrapper';
REVOKE ALL ON FUNCTION webhook.sync(regclass, text), webhook.cancel_sync(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.sync(regclass, text), webhook.cancel_sync(bigint) TO webhook_admin;

-- ---- Health in SQL, lifecycle and alert events (issue 14, SPEC §6) --------------------------
-- endpoint_stats gains oldest_due_age (a new last column: replaced in place).
CREATE OR REPLACE VIEW webhook.endpoint_stats AS
SELECT e.name AS endpoint,
       count(d.id) FILTER (WHERE m.status IN ('pending', 'delivering')) AS pending,
       count(d.id) FILTER (WHERE m.status = 'delivered') AS delivered,
       count(d.id) FILTER (WHERE m.status = 'failed') AS failed,
       e.consecutive_failures, e.last_success_at, e.last_failure_at,
       -- How long the longest-waiting due delivery has been due (an expired lease is due again).
       now() - min(m.next_attempt_at) FILTER (WHERE m.status IN ('pending', 'delivering')
                                               AND m.next_attempt_at <= now()) AS oldest_due_age
FROM webhook.endpoint e
LEFT JOIN webhook.delivery d ON d.endpoint_id = e.id AND d.records IS NULL
LEFT JOIN webhook.delivery m ON m.id = coalesce(d.batch_id, d.id)
GROUP BY e.id;

-- The delivery workers, from shared memory.
CREATE FUNCTION webhook."_workers"() RETURNS TABLE (
	"pid" INT,
	"database" TEXT,
	"started_at" timestamp with time zone,
	"last_loop_at" timestamp with time zone,
	"in_flight" INT,
	"last_error" TEXT
)
STRICT VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'workers_wrapper';
REVOKE ALL ON FUNCTION webhook._workers() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook._workers() TO webhook_admin;
CREATE VIEW webhook.workers AS
SELECT w.pid, w.database, w.started_at, w.last_loop_at, w.in_flight, w.last_error
FROM webhook._workers() w;
REVOKE ALL ON webhook.workers FROM PUBLIC;
GRANT SELECT ON webhook.workers TO webhook_admin;

-- Events an endpoint receives, and the state alerts and disable_after are decided on.
ALTER TABLE webhook.endpoint
    ADD COLUMN events text[] NOT NULL DEFAULT '{}',
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN alert_raised_at timestamptz;
-- An endpoint failing at the upgrade counts its failing time from now.
UPDATE webhook.endpoint SET failing_since = now() WHERE consecutive_failures > 0;
CREATE OR REPLACE VIEW webhook.endpoints AS
SELECT e.name, e.url, e.method, e.headers, e.description, e.format, e.batch_size, e.enabled,
       p.until IS NOT NULL AS rotation_overlap, p.until AS rotation_overlap_until, e.created_at,
       e.events
FROM webhook.endpoint e
CROSS JOIN LATERAL (SELECT max(p.expires_at) AS until FROM webhook.previous_secret p
                    WHERE p.endpoint_id = e.id AND p.expires_at > now()) p;

CREATE FUNCTION webhook."subscribe_events"(
	"endpoint" TEXT,
	"events" TEXT[]
) RETURNS void
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'subscribe_events_wrapper';
REVOKE ALL ON FUNCTION webhook.subscribe_events(text, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.subscribe_events(text, text[]) TO webhook_admin;

-- ---- Ordering and replay (issue 15, SPEC §7) ------------------------------------------------
-- redeliver_failed takes a window [since, until); replay is new. The 0.2.0 symbol of
-- redeliver_failed stays in the library (api::compat) for the old definition.
DROP FUNCTION webhook.redeliver_failed(text);
CREATE FUNCTION webhook."redeliver_failed"(
	"endpoint" TEXT,
	"since" timestamp with time zone DEFAULT '-infinity',
	"until" timestamp with time zone DEFAULT now()
) RETURNS bigint
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'redeliver_failed_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.redeliver_failed(text, timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.redeliver_failed(text, timestamptz, timestamptz) TO webhook_admin;

CREATE FUNCTION webhook."replay"(
	"endpoint" TEXT,
	"since" timestamp with time zone,
	"until" timestamp with time zone DEFAULT now()
) RETURNS bigint
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'replay_wrapper';
REVOKE ALL ON FUNCTION webhook.replay(text, timestamptz, timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.replay(text, timestamptz, timestamptz) TO webhook_admin;

-- Ordering per key (issue 15, SPEC §7): endpoints get ordering ('none' | 'key'); deliveries get
-- the hashes of their key (and of the old key when an UPDATE changed it), and an index the
-- claim probes for an unfinished earlier delivery of the same key.
ALTER TABLE webhook.endpoint
    ADD COLUMN ordering text NOT NULL DEFAULT 'none' CHECK (ordering IN ('none', 'key'));
ALTER TABLE webhook.delivery
    ADD COLUMN order_key bigint,
    ADD COLUMN order_key_old bigint;
CREATE INDEX delivery_order ON webhook.delivery (subscription_id, order_key, id)
    WHERE octet_length(status) > 0;

-- webhook.endpoints shows ordering after batch_size (dropped and created again, with its grant).
DROP VIEW webhook.endpoints;
CREATE VIEW webhook.endpoints AS
SELECT e.name, e.url, e.method, e.headers, e.description, e.format, e.batch_size, e.ordering,
       e.enabled,
       p.until IS NOT NULL AS rotation_overlap, p.until AS rotation_overlap_until, e.created_at,
       e.events
FROM webhook.endpoint e
CROSS JOIN LATERAL (SELECT max(p.expires_at) AS until FROM webhook.previous_secret p
                    WHERE p.endpoint_id = e.id AND p.expires_at > now()) p;
REVOKE ALL ON webhook.endpoints FROM PUBLIC;
GRANT SELECT ON webhook.endpoints TO webhook_admin;

-- alter_endpoint takes ordering (0.3.0's alter_endpoint above, one argument more; same symbol,
-- since 0.3.0's 8-argument definition was never released).
DROP FUNCTION webhook.alter_endpoint(text, text, text, jsonb, text, boolean, text, int);
CREATE FUNCTION webhook.alter_endpoint(
	"name" TEXT,
	"url" TEXT DEFAULT NULL,
	"method" TEXT DEFAULT NULL,
	"headers" jsonb DEFAULT NULL,
	"description" TEXT DEFAULT NULL,
	"enabled" bool DEFAULT NULL,
	"format" TEXT DEFAULT NULL,
	"batch_size" INT DEFAULT NULL,
	"ordering" TEXT DEFAULT NULL
) RETURNS void
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'alter_endpoint_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.alter_endpoint(text, text, text, jsonb, text, boolean, text, int, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.alter_endpoint(text, text, text, jsonb, text, boolean, text, int, text)
    TO webhook_admin;

-- ---------------------------------------------------------------------------------------------
-- WAL capture (SPEC §8)
-- ---------------------------------------------------------------------------------------------
ALTER TABLE webhook.subscription
    ADD COLUMN wal_from pg_lsn,
    ADD COLUMN wal_until pg_lsn;

CREATE TABLE webhook.capture_state (
    slot_name   text PRIMARY KEY,
    applied_lsn pg_lsn NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON webhook.capture_state FROM PUBLIC;

CREATE FUNCTION webhook."_capture_lag"() RETURNS TABLE (
	"slot_name" TEXT,
	"mode" TEXT,
	"wal_status" TEXT,
	"lag_bytes" bigint,
	"lag_ms" bigint,
	"retained_bytes" bigint,
	"alert_bytes" bigint,
	"raised" bool
)
STRICT VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'capture_lag_wrapper';
REVOKE ALL ON FUNCTION webhook._capture_lag() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook._capture_lag() TO webhook_admin;
CREATE VIEW webhook.capture_lag AS
SELECT l.slot_name, l.mode, l.wal_status, l.lag_bytes, l.lag_ms, l.retained_bytes, l.alert_bytes,
       l.raised
FROM webhook._capture_lag() l;
REVOKE ALL ON webhook.capture_lag FROM PUBLIC;
GRANT SELECT ON webhook.capture_lag TO webhook_admin;
