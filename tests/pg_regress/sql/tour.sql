-- The README's five-minute tour, step by step, with what each step leaves in the queue.
-- No worker runs here, so deliveries stay pending; secrets, ids and times vary from run to run
-- and are checked rather than printed.
\set VERBOSITY terse

-- A destination. The secret is returned once: whsec_ + base64 of 32 random bytes.
SELECT webhook.create_endpoint('crm', 'https://crm.example.com/hooks/users',
                               headers => '{"Authorization": "Bearer abc"}') AS secret \gset
SELECT :'secret' ~ '^whsec_[A-Za-z0-9+/]{43}=$' AS looks_like_a_secret,
       length(decode(substr(:'secret', 7), 'base64')) AS key_bytes;

-- It is listed without its secret.
SELECT name, url, method, headers, description, format, enabled, rotation_overlap
FROM webhook.endpoints;

CREATE TABLE users (user_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                    email text, first_name text, ssn text, hidden_fields text[] DEFAULT '{}');

-- Subscribe: which events, which columns, renames, redactions, a per-row visibility column.
-- watch returns the subscription id.
SELECT webhook.watch('users', 'crm',
                     events => '{insert,update,delete}',
                     rename => '{"first_name": "firstName"}',
                     redact => '{ssn}',
                     lookup => '{email}',
                     visibility_column => 'hidden_fields') IS NOT NULL AS watching;

SELECT endpoint, table_name, name, events, columns, rename, redact, lookup, visibility_column
FROM webhook.subscriptions;

-- The subscription is a trigger on the table, naming the endpoint.
SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'users'::regclass;

-- Every change queues one delivery, in the same transaction.
INSERT INTO users (user_id, email, first_name, ssn)
VALUES ('0e223bd4-1324-49ff-b948-122eeaaa42d1', 'jrose@acme.com', 'Juliet', '123');
UPDATE users SET first_name = 'Jules' WHERE email = 'jrose@acme.com';
UPDATE users SET hidden_fields = '{email}' WHERE email = 'jrose@acme.com';

SELECT endpoint, table_name, operation, status, attempts, last_status_code, last_error,
       next_attempt_at <= now() AS due, delivered_at
FROM webhook.deliveries ORDER BY id;

-- The bodies, as they will be sent (meta.id and meta.occurred_at are checked below).
SELECT jsonb_pretty(payload #- '{meta,id}' #- '{meta,occurred_at}') AS payload
FROM webhook.deliveries ORDER BY id;

-- meta.id is the message id (also the webhook-id header: msg_ and 22 base62 characters, never
-- reused, unlike the delivery id); meta.occurred_at the capturing transaction's start, RFC 3339
-- in UTC.
SELECT payload->'meta'->>'id' = message_id AS id_matches,
       message_id ~ '^msg_[0-9A-Za-z]{22}$' AS message_id_form,
       payload->'meta'->>'occurred_at' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$' AS rfc3339_utc,
       (payload->'meta'->>'occurred_at')::timestamptz = created_at AS at_transaction_start
FROM webhook.deliveries ORDER BY id;

-- Watching what happens (the README's list; test_endpoint is left out: it sends a request).
SELECT endpoint, pending, delivered, failed, consecutive_failures, last_success_at, last_failure_at
FROM webhook.endpoint_stats;
SELECT count(*) AS attempts_made FROM webhook.attempts;
SELECT webhook.redeliver_failed('crm');          -- nothing has failed
SELECT webhook.purge('failed', '30 days');       -- no dead letters to drop
SELECT webhook.alter_endpoint('crm', enabled => false);   -- still captures; deliveries wait
SELECT name, enabled FROM webhook.endpoints;
SELECT length(webhook.rotate_secret('crm')) = length(:'secret') AS rotated;
SELECT name, rotation_overlap FROM webhook.endpoints;   -- the old secret signs too, for a day
SELECT webhook.unwatch('users', 'crm');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'users'::regclass;
SELECT count(*) AS still_queued FROM webhook.deliveries;  -- unwatch keeps what is queued
SELECT webhook.drop_endpoint('crm');
SELECT count(*) AS endpoints FROM webhook.endpoints;
SELECT count(*) AS deliveries FROM webhook.deliveries;     -- drop_endpoint removes its deliveries

DROP TABLE users;
