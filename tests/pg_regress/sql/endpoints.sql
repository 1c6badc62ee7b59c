-- Endpoints: where deliveries go. create_endpoint, the endpoints view, alter_endpoint,
-- rotate_secret, drop_endpoint. (Their errors are in errors.sql.)
\set VERBOSITY terse

-- Defaults: POST, no extra headers, no description, rownd payloads, enabled.
SELECT webhook.create_endpoint('plain', 'https://hooks.example.com/plain') AS plain_secret \gset
-- Every setting; the method is accepted in any case and stored upper-case.
SELECT webhook.create_endpoint('full', 'http://hooks.example.com:8080/in?src=pg',
                               method => 'put',
                               headers => '{"Authorization": "Bearer abc", "X-Team": "data"}',
                               description => 'the data team''s intake',
                               format => 'census') AS full_secret \gset

SELECT name, url, method, headers, description, format, enabled, rotation_overlap,
       created_at <= now() AS created
FROM webhook.endpoints ORDER BY name;

-- The view never shows secrets; the secret returned is the one stored, and each endpoint
-- gets its own: whsec_ + standard base64 of 32 random bytes.
SELECT attname FROM pg_attribute
WHERE attrelid = 'webhook.endpoints'::regclass AND attname ~ 'secret';
SELECT name,
       secret = CASE name WHEN 'plain' THEN :'plain_secret' ELSE :'full_secret' END AS returned_once,
       secret ~ '^whsec_[A-Za-z0-9+/]{43}=$' AS format_ok,
       length(decode(substr(secret, 7), 'base64')) AS key_bytes
FROM webhook.endpoint ORDER BY name;
SELECT :'plain_secret' <> :'full_secret' AS distinct_secrets;

-- alter_endpoint changes the named settings; NULL (or leaving one out) keeps it.
SELECT webhook.alter_endpoint('plain', url => 'https://hooks.example.com/v2/plain',
                              method => 'patch', description => 'second version');
SELECT webhook.alter_endpoint('plain', headers => '{"X-Api-Key": "k1"}', format => 'census');
SELECT webhook.alter_endpoint('plain', url => NULL, enabled => false);
SELECT name, url, method, headers, description, format, enabled
FROM webhook.endpoints WHERE name = 'plain';
SELECT webhook.alter_endpoint('plain', headers => '{}', format => 'rownd', enabled => true);
SELECT name, url, method, headers, description, format, enabled
FROM webhook.endpoints WHERE name = 'plain';

-- rotate_secret returns a new secret; the previous one keeps signing (webhook-signature carries
-- both) for webhook.rotation_overlap (1 day by default).
SHOW webhook.rotation_overlap;
BEGIN;
SELECT webhook.rotate_secret('plain') AS new_secret \gset
SELECT secret = :'new_secret' AS new_secret_stored,
       previous_secret = :'plain_secret' AS old_secret_kept,
       previous_secret_expires_at = now() + interval '24 hours' AS overlap_ends,
       :'new_secret' ~ '^whsec_[A-Za-z0-9+/]{43}=$' AS format_ok
FROM webhook.endpoint WHERE name = 'plain';
COMMIT;
SELECT name, rotation_overlap FROM webhook.endpoints ORDER BY name;

-- drop_endpoint removes the endpoint with its subscriptions, its trigger arguments and its
-- deliveries; other endpoints watching the same table keep theirs.
CREATE TABLE notes (id int PRIMARY KEY, body text);
SELECT webhook.watch('notes', 'plain') IS NOT NULL AS watching,
       webhook.watch('notes', 'full') IS NOT NULL AS watching;
SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'notes'::regclass;
INSERT INTO notes VALUES (1, 'hello');
SELECT endpoint, count(*) FROM webhook.deliveries GROUP BY endpoint ORDER BY endpoint;
SELECT webhook.drop_endpoint('plain');
SELECT name FROM webhook.endpoints;
SELECT endpoint, table_name FROM webhook.subscriptions;
SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'notes'::regclass;
SELECT endpoint, count(*) FROM webhook.deliveries GROUP BY endpoint ORDER BY endpoint;
-- The last endpoint of a table takes the trigger with it.
SELECT webhook.drop_endpoint('full');
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'notes'::regclass;
SELECT count(*) AS deliveries FROM webhook.deliveries;
-- The name is free again.
SELECT length(webhook.create_endpoint('plain', 'https://hooks.example.com/plain')) > 0 AS created;
SELECT webhook.drop_endpoint('plain');

DROP TABLE notes;
