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
