-- The queue as an operator sees it: the views deliveries, attempts and endpoint_stats, and
-- redeliver, redeliver_failed and purge. No worker runs here, so the outcomes a worker would
-- record are written into the queue tables by hand (tests only), as the worker records them:
-- status, attempts, last_status_code / last_error, delivered_at, one webhook.attempt row each.
\set VERBOSITY terse

-- The views' columns.
\d webhook.endpoints
\d webhook.subscriptions
\d webhook.deliveries
\d webhook.attempts
\d webhook.endpoint_stats

-- Who may read them: webhook_admin reads every view and no table; PUBLIC nothing.
SELECT c.relname,
       has_table_privilege('webhook_admin', c.oid, 'SELECT') AS webhook_admin,
       EXISTS (SELECT 1 FROM aclexplode(c.relacl) a WHERE a.grantee = 0) AS public
FROM pg_class c WHERE c.relnamespace = 'webhook'::regnamespace AND c.relkind IN ('r', 'v', 'S')
ORDER BY c.relkind DESC, c.relname;

SELECT length(webhook.create_endpoint('crm', 'https://crm.example.com/hooks')) > 0 AS created,
       length(webhook.create_endpoint('billing', 'https://billing.example.com/in')) > 0 AS created;
CREATE TABLE users (user_id int PRIMARY KEY, email text);
SELECT webhook.watch('users', 'crm') IS NOT NULL AS watching,
       webhook.watch('users', 'billing', events => '{insert}') IS NOT NULL AS watching;
INSERT INTO users SELECT g, 'u' || g || '@example.com' FROM generate_series(1, 4) g;

-- Fresh deliveries: pending, due now, never attempted.
SELECT endpoint, table_name, operation, status, attempts, next_attempt_at <= now() AS due,
       last_status_code, last_error, created_at <= now() AS created, delivered_at,
       payload->'data' AS data
FROM webhook.deliveries ORDER BY endpoint, id;
SELECT endpoint, pending, delivered, failed, consecutive_failures, last_success_at, last_failure_at,
       oldest_due_age > interval '0' AS due  -- how long: it grows while nothing delivers
FROM webhook.endpoint_stats ORDER BY endpoint;

-- What a worker records (by hand here). For crm: user 1 delivered at the first attempt; user 2
-- failed once (HTTP 503) and waits for its retry; user 3 failed all 6 attempts (dead letter).
CREATE TEMP VIEW crm AS
SELECT d.id, (d.payload::jsonb->'data'->>'user_id')::int AS user_id
FROM webhook.delivery d JOIN webhook.endpoint e ON e.id = d.endpoint_id WHERE e.name = 'crm';
UPDATE webhook.delivery d SET status = 'delivered', attempts = 1, last_status_code = 200,
                              delivered_at = now()
FROM crm WHERE crm.id = d.id AND crm.user_id = 1;
UPDATE webhook.delivery d SET status = 'pending', attempts = 1, last_status_code = 503,
                              last_error = 'HTTP 503', next_attempt_at = now() + interval '4 s'
FROM crm WHERE crm.id = d.id AND crm.user_id = 2;
UPDATE webhook.delivery d SET status = 'failed', attempts = 6, last_status_code = NULL,
                              last_error = 'connection refused'
FROM crm WHERE crm.id = d.id AND crm.user_id = 3;
INSERT INTO webhook.attempt (delivery_id, attempt, started_at, duration_ms, status_code, error)
SELECT crm.id, a, now(), 12.5,
       CASE crm.user_id WHEN 1 THEN 200 WHEN 2 THEN 503 END,
       CASE crm.user_id WHEN 2 THEN 'HTTP 503' WHEN 3 THEN 'connection refused' END
FROM crm, generate_series(1, CASE crm.user_id WHEN 1 THEN 1 WHEN 2 THEN 1 WHEN 3 THEN 6 END) a
WHERE crm.user_id <= 3;
UPDATE webhook.endpoint SET consecutive_failures = 7, last_success_at = now(),
                            last_failure_at = now() WHERE name = 'crm';

-- next_attempt_at shows only while a delivery waits (pending or delivering); delivered_at once
-- delivered.
SELECT crm.user_id, d.operation, d.status, d.attempts, d.next_attempt_at > now() AS waiting,
       d.last_status_code, d.last_error, d.delivered_at IS NOT NULL AS delivered
FROM webhook.deliveries d JOIN crm ON crm.id = d.id ORDER BY crm.user_id;
SELECT crm.user_id, a.attempt, a.started_at IS NOT NULL AS started, a.duration_ms,
       a.status_code, a.error, a.response_body
FROM webhook.attempts a JOIN crm ON crm.id = a.delivery_id ORDER BY crm.user_id, a.attempt;
SELECT endpoint, pending, delivered, failed, consecutive_failures,
       last_success_at IS NOT NULL AS succeeded_once, last_failure_at IS NOT NULL AS failed_once
FROM webhook.endpoint_stats ORDER BY endpoint;

-- redeliver queues a delivered or failed delivery again, due now, with the same id (so the same
-- webhook-id) and a fresh retry cycle; attempt numbers continue.
SELECT webhook.redeliver(id) FROM crm WHERE user_id = 1;
SELECT crm.user_id, d.status, d.attempts, d.next_attempt_at <= now() AS due
FROM webhook.deliveries d JOIN crm ON crm.id = d.id WHERE crm.user_id = 1;
SELECT cycle_start FROM webhook.delivery d JOIN crm USING (id) WHERE crm.user_id = 1;

-- redeliver_failed does so for every failed delivery of one endpoint and returns how many.
SELECT webhook.redeliver_failed('billing') AS requeued;
SELECT webhook.redeliver_failed('crm') AS requeued;
SELECT webhook.redeliver_failed('crm') AS requeued;    -- none left
SELECT crm.user_id, d.status, d.attempts, d.next_attempt_at <= now() AS due
FROM webhook.deliveries d JOIN crm ON crm.id = d.id ORDER BY crm.user_id;

-- purge deletes failed (default) or delivered deliveries older than older_than (default: any),
-- with their attempts; optionally only one endpoint's. Pending ones are never purged.
UPDATE webhook.delivery d SET status = 'failed', last_error = 'HTTP 410'
FROM crm WHERE crm.id = d.id AND crm.user_id = 1;
UPDATE webhook.delivery d SET status = 'delivered', delivered_at = now() - interval '10 days'
FROM crm WHERE crm.id = d.id AND crm.user_id = 3;
SELECT webhook.purge('delivered', '30 days') AS purged;   -- not old enough
SELECT webhook.purge('delivered', '7 days', endpoint => 'billing') AS purged;  -- not billing's
SELECT webhook.purge('delivered', '7 days') AS purged;
SELECT webhook.purge() AS purged;
SELECT crm.user_id, d.status FROM webhook.deliveries d JOIN crm ON crm.id = d.id ORDER BY 1;
SELECT count(*) AS attempts_left FROM webhook.attempts a JOIN crm ON crm.id = a.delivery_id;
SELECT endpoint, pending, delivered, failed FROM webhook.endpoint_stats ORDER BY endpoint;

SELECT webhook.drop_endpoint('crm');
SELECT webhook.drop_endpoint('billing');
SELECT count(*) AS attempts_left FROM webhook.attempts;
DROP TABLE users;
