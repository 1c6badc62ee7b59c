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

-- Dropping an endpoint removes its queued changes.
SELECT webhook.drop_endpoint(name) FROM webhook.endpoints ORDER BY name;
SELECT count(*) AS deliveries FROM webhook.delivery;
DROP TABLE users;
