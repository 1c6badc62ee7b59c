\echo Use "ALTER EXTENSION webhook UPDATE TO '0.3.0'" to load this file. \quit
-- webhook 0.2.0 -> 0.3.0. A fresh install of 0.3.0 (sql/schema.sql, sql/finalize.sql) gives the
-- same schema; tests/e2e/test_upgrade.py compares the two.

-- Issue 12, endpoints: several live secrets. 0.2.0 kept one previous secret in
-- webhook.endpoint (previous_secret, previous_secret_expires_at), so a second rotation within
-- the overlap cut the first secret off early; now every rotated-out secret signs until its own
-- expiry, from a table of its own. A previous secret still live is carried over.
CREATE TABLE webhook.previous_secret (
    endpoint_id bigint NOT NULL REFERENCES webhook.endpoint (id) ON DELETE CASCADE,
    secret      text NOT NULL,
    retired_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (endpoint_id, secret)
);
REVOKE ALL ON webhook.previous_secret FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('webhook.previous_secret', '');
INSERT INTO webhook.previous_secret (endpoint_id, secret, expires_at)
SELECT e.id, e.previous_secret, e.previous_secret_expires_at FROM webhook.endpoint e
WHERE e.previous_secret IS NOT NULL AND e.previous_secret_expires_at > now()
  AND e.previous_secret <> e.secret;

-- webhook.endpoints read the dropped columns; it gains rotation_overlap_until (before
-- created_at, so it is dropped and created again, with its grant).
DROP VIEW webhook.endpoints;
ALTER TABLE webhook.endpoint DROP COLUMN previous_secret, DROP COLUMN previous_secret_expires_at;
CREATE VIEW webhook.endpoints AS
SELECT e.name, e.url, e.method, e.headers, e.description, e.format, e.enabled,
       p.until IS NOT NULL AS rotation_overlap, p.until AS rotation_overlap_until, e.created_at
FROM webhook.endpoint e
CROSS JOIN LATERAL (SELECT max(p.expires_at) AS until FROM webhook.previous_secret p
                    WHERE p.endpoint_id = e.id AND p.expires_at > now()) p;
REVOKE ALL ON webhook.endpoints FROM PUBLIC;
GRANT SELECT ON webhook.endpoints TO webhook_admin;

-- create_endpoint takes a secret, rotate_secret too, drop_endpoint force. New argument lists
-- are new functions: the old ones go. Their C symbols are new as well (..._0_3_wrapper); the
-- library keeps the old symbols for the old definitions, which a server runs between
-- installing this build and ALTER EXTENSION webhook UPDATE.
DROP FUNCTION webhook.create_endpoint(text, text, text, jsonb, text, text);
CREATE FUNCTION webhook.create_endpoint(
	"name" TEXT,
	"url" TEXT,
	"method" TEXT DEFAULT 'POST',
	"headers" jsonb DEFAULT '{}',
	"description" TEXT DEFAULT NULL,
	"format" TEXT DEFAULT 'rownd',
	"secret" TEXT DEFAULT NULL
) RETURNS TEXT
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_endpoint_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.create_endpoint(text, text, text, jsonb, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.create_endpoint(text, text, text, jsonb, text, text, text) TO webhook_admin;

DROP FUNCTION webhook.rotate_secret(text);
CREATE FUNCTION webhook.rotate_secret(
	"name" TEXT,
	"secret" TEXT DEFAULT NULL
) RETURNS TEXT
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'rotate_secret_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.rotate_secret(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.rotate_secret(text, text) TO webhook_admin;

DROP FUNCTION webhook.drop_endpoint(text);
CREATE FUNCTION webhook.drop_endpoint(
	"name" TEXT,
	"force" bool DEFAULT false
) RETURNS void
VOLATILE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'drop_endpoint_0_3_wrapper';
REVOKE ALL ON FUNCTION webhook.drop_endpoint(text, bool) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhook.drop_endpoint(text, bool) TO webhook_admin;
