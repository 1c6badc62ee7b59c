-- What the capture trigger queues: one delivery per change and subscription, written in the
-- changing transaction, whose payload is the exact body that will be signed and sent.
-- meta.id (the message id) and meta.occurred_at vary from run to run: they are checked in
-- tour.sql and left out here.
\set VERBOSITY terse
SET TimeZone = 'UTC';

CREATE TEMP VIEW sent AS
SELECT endpoint, operation, payload #- '{meta,id}' #- '{meta,occurred_at}' AS payload
FROM webhook.deliveries ORDER BY id;

SELECT length(webhook.create_endpoint('crm', 'https://crm.example.com/hooks')) > 0 AS created;
CREATE TABLE users (user_id int PRIMARY KEY, email text, first_name text, ssn text,
                    hidden text[] NOT NULL DEFAULT '{}');

-- rownd, defaults: every column; lookup_values and a delete's data carry the primary key.
SELECT webhook.watch('users', 'crm') IS NOT NULL AS watching;
INSERT INTO users VALUES (1, 'jrose@acme.com', 'Juliet', '123-45', '{}');
UPDATE users SET first_name = 'Jules' WHERE user_id = 1;
DELETE FROM users WHERE user_id = 1;
TABLE sent;

-- The body bytes keep the table's column order (the view's jsonb sorts keys).
SELECT regexp_replace(payload, '"id":"msg_[0-9A-Za-z]{22}","occurred_at":"[^"]*"', '"id":"<id>","occurred_at":"<at>"')
       AS body
FROM webhook.delivery ORDER BY id LIMIT 1;
DELETE FROM webhook.delivery;   -- (tests only: empty the queue between sections)

-- A rolled-back change queues nothing; a committed one is queued with it.
BEGIN;
INSERT INTO users VALUES (3, 'c@example.com', 'Cy', NULL, '{}');
SELECT count(*) AS queued_inside FROM webhook.deliveries;
ROLLBACK;
SELECT count(*) AS queued_after_rollback FROM webhook.deliveries;
BEGIN;
INSERT INTO users VALUES (3, 'c@example.com', 'Cy', NULL, '{}');
SAVEPOINT s;
UPDATE users SET first_name = 'Cyrus' WHERE user_id = 3;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT operation, payload->'data'->>'first_name' AS first_name FROM webhook.deliveries ORDER BY id;
DELETE FROM webhook.delivery;
DELETE FROM users;
DELETE FROM webhook.delivery;

-- Columns, renames and redactions: data holds the chosen columns in table order, renamed;
-- redacted values are replaced and listed (by field name) in "redacted".
SELECT webhook.watch('users', 'crm', columns => '{user_id,email,ssn}',
                     rename => '{"email": "mail", "user_id": "id"}', redact => '{ssn}')
       IS NOT NULL AS watching;
INSERT INTO users VALUES (4, 'd@example.com', 'Dee', '999', '{}');
UPDATE users SET ssn = '000' WHERE user_id = 4;
DELETE FROM users WHERE user_id = 4;
TABLE sent;
DELETE FROM webhook.delivery;

-- A visibility column (text[]) lists the fields a row hides: they are redacted in every
-- payload of that row, the column itself is never sent, and an UPDATE of nothing but it is a
-- visibility_update. Lookup values are always sent: meta.lookup_values keeps the email that
-- data hides.
SELECT webhook.watch('users', 'crm', visibility_column => 'hidden', lookup => '{email}')
       IS NOT NULL AS watching;
INSERT INTO users VALUES (5, 'e@example.com', 'Eve', '555', '{ssn}');
UPDATE users SET hidden = '{ssn,first_name,email}' WHERE user_id = 5;
UPDATE users SET first_name = 'Evelyn' WHERE user_id = 5;
TABLE sent;
DELETE FROM webhook.delivery;

-- Events: only the operations named are queued.
SELECT webhook.watch('users', 'crm', events => '{delete}') IS NOT NULL AS watching;
INSERT INTO users VALUES (6, 'f@example.com', 'Fay', NULL, '{}');
UPDATE users SET first_name = 'Faye' WHERE user_id = 6;
DELETE FROM users WHERE user_id = 6;
TABLE sent;
DELETE FROM webhook.delivery;

-- Values use PostgreSQL's own JSON conversion (to_jsonb): numbers stay numbers, NULL is null,
-- timestamps are ISO strings, arrays and json nest.
CREATE TABLE kinds (id int PRIMARY KEY, n numeric, f float8, b boolean, ts timestamptz,
                    d date, j jsonb, js json, arr int[], txt text, nothing text, by bytea,
                    u uuid, r int4range);
SELECT webhook.watch('kinds', 'crm') IS NOT NULL AS watching;
INSERT INTO kinds VALUES (1, 12345678901234567890.123456789, 0.1, true,
                          '2021-08-31 23:03:29.5+00', '2021-08-31', '{"a": [1, "x", null]}',
                          '{"b":  2}', '{1,2,NULL}', E'quote " backslash \\ newline \n é',
                          NULL, '\x0102', '0e223bd4-1324-49ff-b948-122eeaaa42d1', '[1,5)');
SELECT jsonb_pretty(payload->'data') AS data FROM webhook.deliveries;
SELECT d.payload->'data' = to_jsonb(k) AS same_as_to_jsonb
FROM webhook.deliveries d, kinds k;
DELETE FROM webhook.delivery;
SELECT webhook.unwatch('kinds', 'crm');

-- A composite primary key: one lookup value per key column.
CREATE TABLE memberships (org int, member int, role text, PRIMARY KEY (org, member));
SELECT webhook.watch('memberships', 'crm') IS NOT NULL AS watching;
INSERT INTO memberships VALUES (1, 2, 'admin');
DELETE FROM memberships;
TABLE sent;
DELETE FROM webhook.delivery;

-- A table without a primary key names its lookup columns; a delete's data holds them.
CREATE TABLE events_log (kind text, ref text, note text);
SELECT webhook.watch('events_log', 'crm', lookup => '{kind,ref}') IS NOT NULL AS watching;
INSERT INTO events_log VALUES ('signup', 'u1', 'hello');
DELETE FROM events_log;
TABLE sent;
DELETE FROM webhook.delivery;

-- census: the batch envelope. connection_name is the endpoint's name, model_name the
-- subscription's name (schema.table by default), sync_configuration_id the subscription id;
-- inserts and updates are "changed", deletes "deleted" (with the key fields).
SELECT length(webhook.create_endpoint('census', 'https://census.example.com/hooks',
                                      format => 'census')) > 0 AS created;
SELECT webhook.watch('users', 'census', name => 'active users', columns => '{user_id,email}')
       AS census_sub \gset
INSERT INTO users VALUES (7, 'g@example.com', 'Gus', NULL, '{}');
UPDATE users SET email = 'gus@example.com' WHERE user_id = 7;
DELETE FROM users WHERE user_id = 7;
SELECT operation, payload - 'sync_run_at' - 'sync_configuration_id' AS payload
FROM webhook.deliveries WHERE endpoint = 'census' ORDER BY id;
SELECT (payload->>'sync_configuration_id')::bigint = :census_sub AS subscription_id,
       (payload->>'sync_run_at')::timestamptz = created_at AS sync_run_at
FROM webhook.deliveries WHERE endpoint = 'census' ORDER BY id;
DELETE FROM webhook.delivery;

-- A disabled endpoint still captures; its deliveries wait until it is enabled again.
SELECT webhook.alter_endpoint('census', enabled => false);
INSERT INTO users VALUES (8, 'h@example.com', 'Hal', NULL, '{}');
SELECT endpoint, operation, status FROM webhook.deliveries ORDER BY endpoint, id;

SELECT webhook.drop_endpoint('crm');
SELECT webhook.drop_endpoint('census');
DROP TABLE users, kinds, memberships, events_log;
RESET TimeZone;
