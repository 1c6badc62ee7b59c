-- replay and redeliver_failed's window (SPEC §7): both queue again, with the original
-- webhook-id and a fresh retry cycle, an endpoint's finished deliveries created in
-- [since, until); replay takes delivered and failed ones, redeliver_failed failed ones only.
-- No worker runs here: outcomes are written by hand, as the worker records them, and
-- created_at is set by hand to place changes in time.
\set VERBOSITY terse

SELECT length(webhook.create_endpoint('crm', 'https://crm.example.com/hooks')) > 0 AS created,
       length(webhook.create_endpoint('census', 'https://census.example.com/in',
                                      format => 'census')) > 0 AS created;
CREATE TABLE users (user_id int PRIMARY KEY, email text);
SELECT webhook.watch('users', 'crm') IS NOT NULL AS watching;
INSERT INTO users SELECT g, 'u' || g || '@example.com' FROM generate_series(1, 6) g;

-- Users 1-6 captured at 10:00, 10:10, ... 10:50; 1-3 delivered, 4-5 failed, 6 still pending.
CREATE TEMP VIEW crm AS
SELECT d.id, (d.payload::jsonb->'data'->>'user_id')::int AS user_id, d.message_id
FROM webhook.delivery d JOIN webhook.endpoint e ON e.id = d.endpoint_id WHERE e.name = 'crm';
UPDATE webhook.delivery d
SET created_at = '2026-01-01 10:00+00'::timestamptz + (crm.user_id - 1) * interval '10 min',
    status = CASE WHEN crm.user_id <= 3 THEN 'delivered' WHEN crm.user_id <= 5 THEN 'failed'
                  ELSE 'pending' END,
    attempts = CASE WHEN crm.user_id <= 3 THEN 1 WHEN crm.user_id <= 5 THEN 6 ELSE 0 END,
    delivered_at = CASE WHEN crm.user_id <= 3 THEN now() END
FROM crm WHERE crm.id = d.id;
CREATE TEMP TABLE ids AS SELECT user_id, message_id FROM crm;

-- replay: [10:10, 10:40) holds users 2, 3 (delivered) and 4 (failed); 10:40 itself is out.
SELECT webhook.replay('crm', '2026-01-01 10:10+00', '2026-01-01 10:40+00') AS replayed;
SELECT crm.user_id, d.status, d.attempts, d.next_attempt_at <= now() AS due,
       d.message_id = ids.message_id AS same_webhook_id
FROM webhook.deliveries d JOIN crm ON crm.id = d.id JOIN ids USING (user_id) ORDER BY 1;
SELECT (SELECT user_id FROM crm WHERE crm.id = d.id), cycle_start
FROM webhook.delivery d WHERE cycle_start > 0 ORDER BY 1;
-- Pending ones are never queued twice: the same window again finds nothing to do.
SELECT webhook.replay('crm', '2026-01-01 10:10+00', '2026-01-01 10:40+00') AS replayed;
-- until defaults to now(): everything from 10:00 that is finished (user 1 and user 5).
SELECT webhook.replay('crm', '2026-01-01 10:00+00') AS replayed;
-- An empty window (since = until) queues nothing.
SELECT webhook.replay('crm', '2026-01-01 10:00+00', '2026-01-01 10:00+00') AS replayed;

-- redeliver_failed takes failed ones only, in its window (default: all of them until now).
UPDATE webhook.delivery d SET status = CASE WHEN crm.user_id <= 3 THEN 'delivered' ELSE 'failed' END
FROM crm WHERE crm.id = d.id AND crm.user_id <= 5;
SELECT webhook.redeliver_failed('crm', '2026-01-01 10:00+00', '2026-01-01 10:35+00') AS requeued;
SELECT webhook.redeliver_failed('crm', until => '2026-01-01 10:35+00') AS requeued;  -- done already
SELECT webhook.redeliver_failed('crm', since => '2026-01-01 10:35+00') AS requeued;  -- user 5
SELECT webhook.redeliver_failed('crm') AS requeued;
SELECT crm.user_id, d.status FROM webhook.deliveries d JOIN crm ON crm.id = d.id ORDER BY 1;

-- Census: the unit is the message. Three changes at 11:00, 11:10, 11:20 went in one message
-- (made by hand, as the worker makes it); a window holding any of them replays the whole
-- message, and the count is its changes.
SELECT webhook.watch('users', 'census') IS NOT NULL AS watching;
INSERT INTO users SELECT g, 'u' || g || '@example.com' FROM generate_series(7, 9) g;
CREATE TEMP TABLE message AS
SELECT nextval('webhook.delivery_id_seq') AS id, 'msg_0000000000000000000015'::text AS message_id;
INSERT INTO webhook.delivery (id, endpoint_id, subscription_id, table_name, operation, payload,
                              status, attempts, message_id, records, delivered_at, created_at)
SELECT m.id, e.id, NULL, 'public.users', 'changed', '{"api_version": 1, "data": []}',
       'delivered', 1, m.message_id, 3, now(), now()
FROM message m, webhook.endpoint e WHERE e.name = 'census';
UPDATE webhook.delivery d SET status = 'batched', batch_id = m.id, message_id = m.message_id,
       created_at = '2026-01-01 11:00+00'::timestamptz
                    + ((d.payload::jsonb->'data'->0->>'user_id')::int - 7) * interval '10 min'
FROM message m, webhook.endpoint e
WHERE e.name = 'census' AND d.endpoint_id = e.id AND d.records IS NULL;
SELECT webhook.replay('census', '2026-01-01 11:15+00', '2026-01-01 11:30+00') AS replayed;
SELECT message_id, status, count(*) FROM webhook.deliveries WHERE endpoint = 'census'
GROUP BY 1, 2;
SELECT status, cycle_start FROM webhook.delivery WHERE records IS NOT NULL;
SELECT webhook.replay('census', '-infinity') AS replayed;   -- pending already
UPDATE webhook.delivery SET status = 'failed' WHERE records IS NOT NULL;
SELECT webhook.redeliver_failed('census', '2026-01-01 11:00+00', '2026-01-01 11:05+00') AS requeued;
-- The window is on the changes' created_at, not the message row's.
UPDATE webhook.delivery SET status = 'delivered' WHERE records IS NOT NULL;
SELECT webhook.replay('census', now() - interval '1 hour') AS replayed;

-- Errors: each names the bad value and what is accepted.
SELECT webhook.replay('nope', '2026-01-01');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.replay(NULL, '2026-01-01');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.replay('crm', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.replay('crm', '2026-01-01', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.replay('crm', '2026-01-02 00:00+00', '2026-01-01 00:00+00');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.redeliver_failed('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.redeliver_failed(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.redeliver_failed('crm', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.redeliver_failed('crm', until => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.redeliver_failed('crm', 'infinity', '-infinity');
\echo :LAST_ERROR_SQLSTATE

-- Who may call them: webhook_admin, not PUBLIC.
SELECT p.oid::regprocedure AS function,
       has_function_privilege('webhook_admin', p.oid, 'EXECUTE') AS webhook_admin,
       EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee = 0) AS public
FROM pg_proc p WHERE p.pronamespace = 'webhook'::regnamespace
  AND p.proname IN ('replay', 'redeliver_failed') ORDER BY 1;

SELECT webhook.drop_endpoint('crm');
SELECT webhook.drop_endpoint('census');
DROP TABLE users;
