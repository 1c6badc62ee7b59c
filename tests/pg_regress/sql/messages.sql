-- Messages: what a receiver gets, one request with one webhook-id. A rownd change is one
-- message; a census endpoint batches up to batch_size changes into one (the worker forms the
-- message when it sends; nothing is sent from this database, so census changes stay pending
-- here and the batches themselves are tested end to end in tests/e2e/test_messages.py).
\set VERBOSITY terse

-- batch_size: census endpoints send up to batch_size records per request (default 100, at most
-- 1000); rownd endpoints send one change per request, so theirs is always 1.
SELECT length(webhook.create_endpoint('crm', 'https://crm.example.com/hooks')) > 0 AS created;
SELECT length(webhook.create_endpoint('census', 'https://census.example.com/hooks',
                                      format => 'census')) > 0 AS created;
SELECT length(webhook.create_endpoint('census_big', 'https://census.example.com/big',
                                      format => 'census', batch_size => 1000)) > 0 AS created;
SELECT length(webhook.create_endpoint('census_one', 'https://census.example.com/one',
                                      format => 'census', batch_size => 1)) > 0 AS created;
SELECT name, format, batch_size FROM webhook.endpoints ORDER BY name;

-- alter_endpoint: batch_size changes it; a change of format resets an unspecified batch_size
-- to the new format's default; the same format keeps it.
SELECT webhook.alter_endpoint('census', batch_size => 250);
SELECT webhook.alter_endpoint('census', format => 'census', description => 'still census');
SELECT name, format, batch_size FROM webhook.endpoints WHERE name = 'census';
SELECT webhook.alter_endpoint('census', format => 'rownd');
SELECT name, format, batch_size FROM webhook.endpoints WHERE name = 'census';
SELECT webhook.alter_endpoint('census', format => 'census');
SELECT name, format, batch_size FROM webhook.endpoints WHERE name = 'census';
SELECT webhook.alter_endpoint('crm', format => 'census', batch_size => 10);
SELECT name, format, batch_size FROM webhook.endpoints WHERE name = 'crm';
SELECT webhook.alter_endpoint('crm', format => 'rownd');
SELECT name, format, batch_size FROM webhook.endpoints WHERE name = 'crm';

-- Out of range, or anything but 1 on rownd: 22023, naming the value and the accepted range;
-- nothing changes.
SELECT webhook.create_endpoint('e', 'https://census.example.com/e', format => 'census', batch_size => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://census.example.com/e', format => 'census', batch_size => 1001);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://census.example.com/e', format => 'census', batch_size => -5);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/e', batch_size => 100);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint('crm', batch_size => 2);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint('census', batch_size => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint('census', format => 'rownd', batch_size => 100);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint('census_big', format => 'rownd', batch_size => 5000);
\echo :LAST_ERROR_SQLSTATE
SELECT name, format, batch_size FROM webhook.endpoints ORDER BY name;

-- Message ids: msg_ and 22 base62 characters, the webhook-id of every attempt. A rownd change
-- gets its own when it is captured (meta.id is the same); a census change gets its message's
-- when the worker batches it, so until then it has none.
CREATE TABLE users (user_id int PRIMARY KEY, email text);
-- (tests only: restart delivery ids so that the one printed in a message below is stable)
ALTER SEQUENCE webhook.delivery_id_seq RESTART;
SELECT webhook.watch('users', 'crm') IS NOT NULL AS watching,
       webhook.watch('users', 'census') IS NOT NULL AS watching;
INSERT INTO users VALUES (1, 'a@example.com'), (2, 'b@example.com');
UPDATE users SET email = 'c@example.com' WHERE user_id = 2;
SELECT endpoint, operation, status,
       message_id ~ '^msg_[0-9A-Za-z]{22}$' AS message_id_ok,
       message_id = payload->'meta'->>'id' AS meta_id_matches
FROM webhook.deliveries ORDER BY endpoint, id;
SELECT count(DISTINCT message_id) AS distinct_ids FROM webhook.deliveries WHERE endpoint = 'crm';
-- The delivery id stays the local bigint that redeliver takes; the two are different things.
SELECT pg_typeof(id) AS id_type, pg_typeof(message_id) AS message_id_type
FROM webhook.deliveries LIMIT 1;

-- What the worker does when it sends census changes (by hand here, as it does it): one message
-- row carries the body and the webhook-id (records: how many changes); each change becomes
-- `batched` into it. The views show, for each change, its message's id and state; the message
-- row itself is not a change and is not listed.
CREATE TEMP TABLE message AS
SELECT nextval('webhook.delivery_id_seq') AS id, 'msg_0000000000000000000042'::text AS message_id;
INSERT INTO webhook.delivery (id, endpoint_id, subscription_id, table_name, operation, payload,
                              status, attempts, message_id, records, last_status_code, delivered_at)
SELECT m.id, e.id, NULL, 'public.users', 'changed', '{"api_version": 1, "data": []}',
       'delivered', 2, m.message_id, 3, 200, now()
FROM message m, webhook.endpoint e WHERE e.name = 'census';
UPDATE webhook.delivery d SET status = 'batched', batch_id = m.id, message_id = m.message_id
FROM message m, webhook.endpoint e
WHERE e.name = 'census' AND d.endpoint_id = e.id AND d.records IS NULL;
INSERT INTO webhook.attempt (delivery_id, attempt, started_at, status_code, error)
SELECT id, 1, now(), 503, 'HTTP 503' FROM message
UNION ALL SELECT id, 2, now(), 200, NULL FROM message;
SELECT endpoint, operation, message_id, status, attempts, last_status_code,
       delivered_at IS NOT NULL AS delivered
FROM webhook.deliveries WHERE endpoint = 'census' ORDER BY id;
SELECT d.operation, a.attempt, a.status_code, a.error
FROM webhook.attempts a JOIN webhook.deliveries d ON d.id = a.delivery_id ORDER BY d.id, a.attempt;
SELECT endpoint, pending, delivered, failed FROM webhook.endpoint_stats ORDER BY endpoint;
-- Redelivering any change of the message queues the message again (the worker resends its
-- body and webhook-id as they are): each change shows it pending.
SELECT webhook.redeliver(min(id)) FROM webhook.deliveries WHERE endpoint = 'census';
SELECT endpoint, message_id, status, attempts FROM webhook.deliveries WHERE endpoint = 'census' ORDER BY id;
SELECT id = (SELECT id FROM message) AS message_row, status, cycle_start
FROM webhook.delivery WHERE records IS NOT NULL;
SELECT webhook.redeliver(min(id)) FROM webhook.deliveries WHERE endpoint = 'census';
\echo :LAST_ERROR_SQLSTATE
-- A failed message counts once per change in redeliver_failed, and purge takes its changes
-- with it.
UPDATE webhook.delivery SET status = 'failed' WHERE records IS NOT NULL;
SELECT webhook.redeliver_failed('census') AS requeued;
UPDATE webhook.delivery SET status = 'failed' WHERE records IS NOT NULL;
SELECT webhook.purge(endpoint => 'census') AS purged;
SELECT count(*) AS census_rows FROM webhook.delivery d JOIN webhook.endpoint e ON e.id = d.endpoint_id
WHERE e.name = 'census';
SELECT count(*) AS attempts_left FROM webhook.attempt;

-- Dropping an endpoint removes its queued changes.
SELECT webhook.drop_endpoint(name) FROM webhook.endpoints ORDER BY name;
SELECT count(*) AS deliveries FROM webhook.delivery;
DROP TABLE users;
