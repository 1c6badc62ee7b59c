\echo Use "ALTER EXTENSION webhook UPDATE TO '0.2.0'" to load this file. \quit
-- webhook 0.1.0 -> 0.2.0. A fresh install of 0.2.0 (sql/finalize.sql) gives the same schema;
-- tests/e2e/test_upgrade.py compares the two.

-- webhook.subscriptions: name defaults to schema.table from the catalog names, unquoted
-- (Sales.My Orders), as payloads send it in meta.table and census model_name; 0.1.0 showed the
-- regclass text (users, "Sales"."My Orders"). Same columns and types, so CREATE OR REPLACE
-- keeps the view's grants and its extension membership (and COLLATE the column's collation:
-- catalog names collate as "C").
CREATE OR REPLACE VIEW webhook.subscriptions AS
SELECT s.id, e.name AS endpoint, s.relid AS table_name,
       coalesce(s.name, (SELECT (n.nspname::text || '.' || c.relname::text) COLLATE pg_catalog."default"
                         FROM pg_catalog.pg_class c
                         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                         WHERE c.oid = s.relid)) AS name,
       s.events, s.columns, s.rename, s.redact, s.lookup, s.visibility_column, s.created_at
FROM webhook.subscription s JOIN webhook.endpoint e ON e.id = s.endpoint_id;

-- Dropping a watched table removes its subscriptions (0.1.0 left them behind, and then
-- drop_endpoint of their endpoint failed with "cache lookup failed for relation").
CREATE FUNCTION webhook._forget_dropped_tables() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM webhook.subscription s
    WHERE s.relid::pg_catalog.oid OPERATOR(pg_catalog.=) ANY (
        SELECT d.objid FROM pg_catalog.pg_event_trigger_dropped_objects() d
        WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
          AND d.objsubid OPERATOR(pg_catalog.=) 0);
END
$$;
REVOKE ALL ON FUNCTION webhook._forget_dropped_tables() FROM PUBLIC;
CREATE EVENT TRIGGER webhook_forget_dropped_tables ON sql_drop
    EXECUTE FUNCTION webhook._forget_dropped_tables();

-- Subscriptions left behind by tables dropped under 0.1.0.
DELETE FROM webhook.subscription s
WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = s.relid);
