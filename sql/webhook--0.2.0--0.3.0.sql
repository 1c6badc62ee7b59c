\echo Use "ALTER EXTENSION webhook UPDATE TO '0.3.0'" to load this file. \quit
-- webhook 0.2.0 -> 0.3.0. A fresh install of 0.3.0 (sql/schema.sql, sql/finalize.sql) gives the
-- same schema; tests/e2e/test_upgrade.py compares the two.

-- ---- Message ids and census batches (issue 12) ----------------------------------------------
-- Endpoints get batch_size: census endpoints send up to that many records per request (100 by
-- default), rownd ones one.
ALTER TABLE webhook.endpoint
    ADD COLUMN batch_size integer NOT NULL DEFAULT 1,
    ADD CONSTRAINT endpoint_batch_size_check
        CHECK (batch_size BETWEEN 1 AND 1000 AND (format = 'census' OR batch_size = 1));
UPDATE webhook.endpoint SET batch_size = 100 WHERE format = 'census';

-- Deliveries get a message id (the webhook-id), and census changes are batched into messages.
ALTER TABLE webhook.delivery
    DROP CONSTRAINT delivery_status_check,
    ADD CONSTRAINT delivery_status_check
        CHECK (status IN ('pending', 'delivering', 'delivered', 'failed', 'batched')),
    ADD COLUMN message_id text,
    ADD COLUMN batch_id bigint,
    ADD COLUMN records integer,
    ADD COLUMN sync_run_id bigint;
-- What 0.2.0 queued keeps the webhook-id it had, its delivery id, so that a retry or a
-- redelivery carries the id its receiver may have seen already (and rownd bodies their meta.id);
-- only census changes never attempted are left to be batched.
UPDATE webhook.delivery SET message_id = id::text
WHERE NOT (status = 'pending' AND attempts = 0 AND left(payload, 15) = '{"api_version":');
CREATE INDEX delivery_batch ON webhook.delivery (batch_id) WHERE status = 'batched';

-- create_endpoint and alter_endpoint take batch_size.
DROP FUNCTION webhook.create_endpoint(text, text, text, jsonb, text, text);
CREATE FUNCTION webhook.create_endpoint(
	"name" TEXT,
	"url" TEXT,
	"method" TEXT DEFAULT 'POST',
	"headers" jsonb DEFAULT '{}',
	"description" TEXT DEFAULT NULL,
	"format" TEXT DEFAULT 'rownd',
	"batch_size" INT DEFAULT NULL
) RETURNS TEXT
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_endpoint_0_3_wrapper';
DROP FUNCTION webhook.alter_endpoint(text, text, text, jsonb, text, boolean, text);
CREATE FUNCTION webhook.alter_endpoint(
	"name" TEXT,
	"url" TEXT DEFAULT NULL,
	"method" TEXT DEFAULT NULL,
	"headers" jsonb DEFAULT NULL,
	"description" TEXT DEFAULT NULL,
	"enabled" bool DEFAULT NULL,
	"format" TEXT DEFAULT NULL,
	"batch_size" INT DEFAULT NULL
) RETURNS void
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'alter_endpoint_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.create_endpoint(text, text, text, jsonb, text, text, int),
                       webhook.alter_endpoint(text, text, text, jsonb, text, boolean, text, int)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.create_endpoint(text, text, text, jsonb, text, text, int),
                          webhook.alter_endpoint(text, text, text, jsonb, text, boolean, text, int)
    TO webhook_admin;

-- Views: endpoints shows batch_size, deliveries the message id (new columns in the middle, so
-- these two are created again, with their grants); a census change shows its message's state.
DROP VIEW webhook.endpoints;
CREATE VIEW webhook.endpoints AS
SELECT e.name, e.url, e.method, e.headers, e.description, e.format, e.batch_size, e.enabled,
       e.previous_secret_expires_at > now() AS rotation_overlap, e.created_at
FROM webhook.endpoint e;
DROP VIEW webhook.deliveries;
CREATE VIEW webhook.deliveries AS
SELECT d.id, d.message_id, e.name AS endpoint, d.table_name, d.operation, m.status, m.attempts,
       CASE WHEN m.status IN ('pending', 'delivering') THEN m.next_attempt_at END AS next_attempt_at,
       m.last_status_code, m.last_error, d.created_at, m.delivered_at, d.payload::jsonb AS payload
FROM webhook.delivery d
JOIN webhook.delivery m ON m.id = coalesce(d.batch_id, d.id)
LEFT JOIN webhook.endpoint e ON e.id = d.endpoint_id
WHERE d.records IS NULL;
GRANT SELECT ON webhook.endpoints, webhook.deliveries TO webhook_admin;
CREATE OR REPLACE VIEW webhook.attempts AS
SELECT coalesce(c.id, a.delivery_id) AS delivery_id, a.attempt, a.started_at, a.duration_ms,
       a.status_code, a.error, a.response_body
FROM webhook.attempt a
LEFT JOIN webhook.delivery c ON c.batch_id = a.delivery_id AND c.status = 'batched';
CREATE OR REPLACE VIEW webhook.endpoint_stats AS
SELECT e.name AS endpoint,
       count(d.id) FILTER (WHERE m.status IN ('pending', 'delivering')) AS pending,
       count(d.id) FILTER (WHERE m.status = 'delivered') AS delivered,
       count(d.id) FILTER (WHERE m.status = 'failed') AS failed,
       e.consecutive_failures, e.last_success_at, e.last_failure_at
FROM webhook.endpoint e
LEFT JOIN webhook.delivery d ON d.endpoint_id = e.id AND d.records IS NULL
LEFT JOIN webhook.delivery m ON m.id = coalesce(d.batch_id, d.id)
GROUP BY e.id;
