-- webhook: views and privileges. Runs last in CREATE EXTENSION webhook.

-- Endpoints without their secrets. rotation_overlap: some rotated-out secret still signs, until
-- rotation_overlap_until (the last of them expires then).
-- (The same definition is in webhook--0.2.0--0.3.0.sql.)
CREATE VIEW webhook.endpoints AS
SELECT e.name, e.url, e.method, e.headers, e.description, e.format, e.batch_size, e.ordering,
       e.enabled,
       p.until IS NOT NULL AS rotation_overlap, p.until AS rotation_overlap_until, e.created_at,
       e.events
FROM webhook.endpoint e
CROSS JOIN LATERAL (SELECT max(p.expires_at) AS until FROM webhook.previous_secret p
                    WHERE p.endpoint_id = e.id AND p.expires_at > now()) p;

-- name: the subscription's name, by default schema.table from the catalog names, unquoted
-- (Sales.My Orders), the text payloads send as meta.table and census model_name. Catalog names
-- collate as "C"; COLLATE keeps the column's default collation.
-- (The same definition is in webhook--0.1.0--0.2.0.sql.)
CREATE VIEW webhook.subscriptions AS
SELECT s.id, e.name AS endpoint, s.relid AS table_name,
       coalesce(s.name, (SELECT (n.nspname::text || '.' || c.relname::text) COLLATE pg_catalog."default"
                         FROM pg_catalog.pg_class c
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE c.oid = s.relid)) AS name,
       s.events, s.columns, s.rename, s.redact, s.lookup, s.visibility_column, s.created_at,
       s.behavior, s.changed, s.predicate
FROM webhook.subscription s JOIN webhook.endpoint e ON e.id = s.endpoint_id;

-- One row per change. A batched census change shows its message's state (m: the message row);
-- message rows themselves (records IS NOT NULL) are not changes and are not listed.
-- (The same definitions are in webhook--0.2.0--0.3.0.sql.)
CREATE VIEW webhook.deliveries AS
SELECT d.id, d.message_id, e.name AS endpoint, d.table_name, d.operation, m.status, m.attempts,
       CASE WHEN m.status IN ('pending', 'delivering') THEN m.next_attempt_at END AS next_attempt_at,
       m.last_status_code, m.last_error, d.created_at, m.delivered_at, d.payload::jsonb AS payload
FROM webhook.delivery d
JOIN webhook.delivery m ON m.id = coalesce(d.batch_id, d.id)
LEFT JOIN webhook.endpoint e ON e.id = d.endpoint_id
WHERE d.records IS NULL;

-- A census message's attempts are shown for each change it carries.
CREATE VIEW webhook.attempts AS
SELECT coalesce(c.id, a.delivery_id) AS delivery_id, a.attempt, a.started_at, a.duration_ms,
       a.status_code, a.error, a.response_body
FROM webhook.attempt a
LEFT JOIN webhook.delivery c ON c.batch_id = a.delivery_id AND c.status = 'batched';

CREATE VIEW webhook.endpoint_stats AS
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

-- Sync runs, as SPEC §6 lists their columns (rows_queued: read and queued so far).
CREATE VIEW webhook.sync_runs AS
SELECT r.id, e.name AS endpoint, r.table_name, r.status, r.rows_total, r.rows_sent, r.rows_failed,
       r.triggered_at, r.started_at, r.finished_at, r.error, r.rows_queued
FROM webhook.sync_run r JOIN webhook.endpoint e ON e.id = r.endpoint_id;

-- One row per running delivery worker, from shared memory (webhook._workers()). last_error is
-- the error that last ended a worker in that slot; it survives the restart that follows.
-- (The same definitions are in webhook--0.2.0--0.3.0.sql.)
CREATE VIEW webhook.workers AS
SELECT w.pid, w.database, w.started_at, w.last_loop_at, w.in_flight, w.last_error
FROM webhook._workers() w;

-- WAL capture's slot and lag (SPEC §8), from webhook._capture_lag(); no row in trigger mode.
-- (The same definitions are in webhook--0.2.0--0.3.0.sql.)
CREATE VIEW webhook.capture_lag AS
SELECT l.slot_name, l.mode, l.wal_status, l.lag_bytes, l.lag_ms, l.retained_bytes, l.alert_bytes,
       l.raised
FROM webhook._capture_lag() l;

-- Functions are executable by PUBLIC by default in PostgreSQL; none of ours should be.
-- The capture trigger needs no grant to fire for roles that write watched tables.
REVOKE ALL ON ALL TABLES IN SCHEMA webhook FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA webhook FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA webhook FROM PUBLIC;

-- Delegation: members of webhook_admin may manage endpoints and subscriptions and read the
-- views (payloads included), but never the tables themselves: secrets stay unreadable.
-- Roles are cluster-wide, so the role outlives DROP EXTENSION and is shared by databases.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'webhook_admin') THEN
        CREATE ROLE webhook_admin NOLOGIN;
    END IF;
END
$$;
GRANT USAGE ON SCHEMA webhook TO webhook_admin;
GRANT SELECT ON webhook.endpoints, webhook.subscriptions, webhook.deliveries, webhook.attempts,
                webhook.endpoint_stats, webhook.workers, webhook.sync_runs, webhook.capture_lag
    TO webhook_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA webhook TO webhook_admin;

-- Dropping a watched table removes its subscriptions, so nothing refers to a table that no
-- longer exists (drop_endpoint would fail on it). The function runs as the extension owner so
-- that any role that may drop its own table can; it is internal (leading underscore), created
-- after the grants above and executable by nobody else. (The same definitions are in
-- webhook--0.1.0--0.2.0.sql.)
CREATE FUNCTION webhook._forget_dropped_tables() RETURNS event_trigger
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
REVOKE ALL ON FUNCTION webhook._forget_dropped_tables() FROM PUBLIC;
CREATE EVENT TRIGGER webhook_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION webhook._forget_dropped_tables();

-- The DDL guard (SPEC §5): at the end of every ALTER TABLE, refuse the command if it dropped,
-- renamed or retyped a column a subscription names, or left a subscription unable to fit its
-- table; writes to a watched table then never fail because of a subscription. (The same
-- definitions are in webhook--0.2.0--0.3.0.sql.)
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

-- Say so at once when nothing would ever be delivered from this database.
DO $$
BEGIN
    IF pg_catalog.current_setting('shared_preload_libraries') !~ '(^|[ ,])"?webhook"?($|[ ,])' THEN
        RAISE WARNING 'webhook is not in shared_preload_libraries: changes are queued but no worker delivers them'
            USING HINT = 'Add webhook to shared_preload_libraries in postgresql.conf and restart PostgreSQL.';
    ELSIF pg_catalog.current_setting('webhook.database', true) IS DISTINCT FROM pg_catalog.current_database() THEN
        RAISE WARNING 'the delivery worker connects to database "%", not to "%": changes queued here are not delivered',
            pg_catalog.current_setting('webhook.database', true), pg_catalog.current_database()
            USING HINT = 'Set webhook.database in postgresql.conf to this database and restart PostgreSQL.';
    END IF;
END
$$;
