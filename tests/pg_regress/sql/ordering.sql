-- Ordering per key (SPEC §7): alter_endpoint(name, ordering => 'key' | 'none'), shown in
-- webhook.endpoints. Deliveries of an ordered endpoint carry the hash of their row's key (and of
-- the old key when an UPDATE changed it); the worker sends one per subscription and key at a
-- time. No worker runs here: this shows what capture queues.
\set VERBOSITY terse

SELECT length(webhook.create_endpoint('crm', 'https://crm.example.com/hooks')) > 0 AS created,
       length(webhook.create_endpoint('plain', 'https://plain.example.com/in')) > 0 AS created;
SELECT name, ordering FROM webhook.endpoints ORDER BY name;
SELECT webhook.alter_endpoint('crm', ordering => 'key');
SELECT name, ordering FROM webhook.endpoints ORDER BY name;
-- Other settings leave ordering alone.
SELECT webhook.alter_endpoint('crm', description => 'mirror');
SELECT name, ordering, description FROM webhook.endpoints WHERE name = 'crm';

CREATE TABLE users (user_id int, region text, email text, PRIMARY KEY (region, user_id));
SELECT webhook.watch('users', 'crm') IS NOT NULL AS watching,
       webhook.watch('users', 'plain') IS NOT NULL AS watching;
INSERT INTO users VALUES (1, 'eu', 'a@x'), (2, 'eu', 'b@x');
UPDATE users SET email = 'a2@x' WHERE user_id = 1;            -- same key
UPDATE users SET user_id = 3 WHERE user_id = 2;               -- the key changes: 2 -> 3
DELETE FROM users WHERE user_id = 1;

-- Only the ordered endpoint's deliveries carry keys; one key, one hash.
CREATE TEMP VIEW queued AS
SELECT e.name AS endpoint, d.id, d.operation,
       coalesce(d.payload::jsonb->'data'->>'user_id', '?') AS user_id, d.order_key, d.order_key_old
FROM webhook.delivery d JOIN webhook.endpoint e ON e.id = d.endpoint_id;
SELECT endpoint, operation, user_id, order_key IS NOT NULL AS keyed,
       order_key_old IS NOT NULL AS old_keyed
FROM queued ORDER BY endpoint, id;
SELECT count(DISTINCT order_key) AS keys FROM queued WHERE endpoint = 'crm';
-- The key change is ordered behind both keys: its old key is user 2's, its key user 3's.
SELECT (SELECT order_key FROM queued WHERE endpoint = 'crm' AND operation = 'data_insert' AND user_id = '2')
       = (SELECT order_key_old FROM queued WHERE endpoint = 'crm' AND user_id = '3') AS old_key_is_user_2s;
-- The delete of user 1 has user 1's key (the old row's).
SELECT count(DISTINCT order_key) AS user_1_keys FROM queued WHERE endpoint = 'crm' AND user_id = '1';

-- Switching ordering off removes the keys queued deliveries hold; capture gives no more.
SELECT webhook.alter_endpoint('crm', ordering => 'none');
SELECT count(*) FILTER (WHERE order_key IS NOT NULL OR order_key_old IS NOT NULL) AS keyed
FROM queued WHERE endpoint = 'crm';
INSERT INTO users VALUES (9, 'us', 'z@x');
SELECT count(*) FILTER (WHERE order_key IS NOT NULL) AS keyed FROM queued;

-- Errors.
SELECT webhook.alter_endpoint('crm', ordering => 'fifo');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint('nope', ordering => 'key');
\echo :LAST_ERROR_SQLSTATE

SELECT webhook.drop_endpoint('crm');
SELECT webhook.drop_endpoint('plain');
DROP TABLE users;
