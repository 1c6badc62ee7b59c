-- Subscriptions: which tables an endpoint receives, and in which shape. watch, the
-- subscriptions view, unwatch, and capture() triggers attached by hand. (Payload shapes are in
-- capture_payloads.sql, errors in errors.sql.)
\set VERBOSITY terse

SELECT length(webhook.create_endpoint('crm', 'https://crm.example.com/hooks')) > 0 AS created,
       length(webhook.create_endpoint('audit', 'https://audit.example.com/in')) > 0 AS created;
CREATE TABLE users (user_id int PRIMARY KEY, email text, first_name text, ssn text,
                    hidden text[] DEFAULT '{}');
CREATE TABLE orders (order_id int PRIMARY KEY, user_id int, total numeric);

-- Defaults: every event, every column, no renames or redactions, the primary key as lookup,
-- named schema.table.
SELECT webhook.watch('users', 'crm') AS users_crm \gset
SELECT id = :users_crm AS same_id, endpoint, table_name, name, events, columns, rename, redact,
       lookup, visibility_column, created_at <= now() AS created
FROM webhook.subscriptions;

-- Watching again replaces the options and keeps the subscription (same id).
SELECT webhook.watch('users', 'crm', events => '{insert, UPDATE}', columns => '{user_id,email,hidden}',
                     rename => '{"email": "mail"}', redact => '{email}', lookup => '{user_id}',
                     visibility_column => 'hidden', name => 'active users') = :users_crm AS same_id;
SELECT endpoint, table_name, name, events, columns, rename, redact, lookup, visibility_column
FROM webhook.subscriptions;

-- One table, many endpoints; one endpoint, many tables. Each table has one trigger,
-- webhook_capture, whose arguments are the endpoints watching it.
SELECT webhook.watch('users', 'audit') IS NOT NULL AS watching,
       webhook.watch('orders', 'crm', events => '{delete}') IS NOT NULL AS watching;
SELECT endpoint, table_name, name, events FROM webhook.subscriptions ORDER BY endpoint, table_name;
SELECT tgrelid::regclass AS table_name, tgname, pg_get_triggerdef(oid) AS definition
FROM pg_trigger WHERE tgname = 'webhook_capture' ORDER BY 1;

-- Each change queues one delivery per subscription whose events include it.
INSERT INTO users (user_id, email, first_name, ssn) VALUES (1, 'a@example.com', 'Ann', '1');
INSERT INTO orders VALUES (10, 1, 9.99);
DELETE FROM orders;
SELECT endpoint, table_name, operation FROM webhook.deliveries ORDER BY id;

-- unwatch ends one subscription; what it queued stays queued, and the trigger keeps the
-- other endpoints (or goes, with the last one).
SELECT webhook.unwatch('users', 'crm');
SELECT webhook.unwatch('orders', 'crm');
SELECT endpoint, table_name FROM webhook.subscriptions ORDER BY endpoint, table_name;
SELECT tgrelid::regclass AS table_name, pg_get_triggerdef(oid) AS definition
FROM pg_trigger WHERE tgname = 'webhook_capture' ORDER BY 1;
SELECT count(*) AS queued FROM webhook.deliveries;

-- A trigger attached by hand: each argument names an endpoint; that endpoint's subscription
-- options for the table apply if watch() stored any, defaults otherwise.
CREATE TRIGGER orders_to_crm AFTER INSERT OR UPDATE OR DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION webhook.capture('crm');
INSERT INTO orders VALUES (11, 1, 5);
SELECT endpoint, table_name, operation, payload->'data' AS data
FROM webhook.deliveries WHERE table_name = 'public.orders' ORDER BY id;
DROP TRIGGER orders_to_crm ON orders;

-- Tables in other schemas, with names that need quoting: the subscription's default name and
-- the deliveries' table_name (meta.table) are schema.table from the catalog names, unquoted;
-- the view's table_name is the table itself (regclass, quoted as SQL needs).
CREATE SCHEMA "Sales";
CREATE TABLE "Sales"."My Orders" ("Order Id" int PRIMARY KEY, amount int);
SELECT webhook.watch('"Sales"."My Orders"', 'audit') IS NOT NULL AS watching;
INSERT INTO "Sales"."My Orders" VALUES (1, 100);
SELECT table_name, name FROM webhook.subscriptions
WHERE table_name = '"Sales"."My Orders"'::regclass;
SELECT table_name, payload->'meta'->>'table' AS meta_table, payload->'data' AS data
FROM webhook.deliveries WHERE table_name LIKE 'Sales.%';
DROP TABLE "Sales"."My Orders";
DROP SCHEMA "Sales";

-- Dropping a watched table removes its subscriptions ("Sales"."My Orders" above, scratch
-- here), so an endpoint that watched it can still be dropped.
CREATE TABLE scratch (id int PRIMARY KEY);
SELECT webhook.watch('scratch', 'crm') IS NOT NULL AS watching;
DROP TABLE scratch;
SELECT endpoint, table_name, name FROM webhook.subscriptions ORDER BY endpoint, table_name;
SELECT webhook.drop_endpoint('crm');
SELECT webhook.drop_endpoint('audit');
SELECT count(*) AS endpoints FROM webhook.endpoints;
SELECT count(*) AS subscriptions FROM webhook.subscriptions;
-- (tests only: leave nothing behind for the next test if the calls above failed)
DELETE FROM webhook.delivery WHERE endpoint_id IN (SELECT id FROM webhook.endpoint WHERE name IN ('crm', 'audit'));
DELETE FROM webhook.endpoint WHERE name IN ('crm', 'audit');
DROP TABLE users, orders;
