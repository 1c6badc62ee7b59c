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

-- rotate_secret returns a new secret; the one it replaces keeps signing (webhook-signature
-- carries both) for webhook.rotation_overlap (1 day by default).
SHOW webhook.rotation_overlap;
BEGIN;
SELECT webhook.rotate_secret('plain') AS new_secret \gset
SELECT secret = :'new_secret' AS new_secret_stored,
       :'new_secret' ~ '^whsec_[A-Za-z0-9+/]{43}=$' AS format_ok
FROM webhook.endpoint WHERE name = 'plain';
SELECT p.secret = :'plain_secret' AS old_secret_kept,
       p.expires_at = now() + interval '24 hours' AS overlap_ends
FROM webhook.previous_secret p JOIN webhook.endpoint e ON e.id = p.endpoint_id
WHERE e.name = 'plain';
COMMIT;
SELECT name, rotation_overlap, rotation_overlap_until > now() + interval '23 hours' AS for_a_day
FROM webhook.endpoints ORDER BY name;

-- An operator may bring the secret: whsec_ + standard base64 of 24 to 256 bytes (this one is
-- SPEC's known-answer secret). A second rotation within the overlap keeps every earlier secret
-- signing, each until its own expiry, newest first.
SELECT webhook.rotate_secret('plain', secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') AS brought;
SELECT p.secret = :'new_secret' AS first_rotated, p.secret = :'plain_secret' AS original
FROM webhook.previous_secret p JOIN webhook.endpoint e ON e.id = p.endpoint_id
WHERE e.name = 'plain' ORDER BY p.retired_at DESC;
-- Rolling back to a secret still inside its overlap makes it current again; the one it
-- replaces joins the previous secrets.
SELECT webhook.rotate_secret('plain', secret => :'new_secret') = :'new_secret' AS rolled_back;
SELECT p.secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' AS brought_one, p.secret = :'plain_secret' AS original
FROM webhook.previous_secret p JOIN webhook.endpoint e ON e.id = p.endpoint_id
WHERE e.name = 'plain' ORDER BY p.retired_at DESC;
-- With no overlap the replaced secret stops signing at once; expired ones are deleted.
SET webhook.rotation_overlap = 0;
UPDATE webhook.previous_secret SET expires_at = now() - interval '1 second'
WHERE secret = :'plain_secret';
SELECT length(webhook.rotate_secret('plain')) AS generated_length;
RESET webhook.rotation_overlap;
SELECT p.secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' AS brought_one
FROM webhook.previous_secret p JOIN webhook.endpoint e ON e.id = p.endpoint_id
WHERE e.name = 'plain';
-- create_endpoint takes a secret too, and returns it like a generated one.
SELECT webhook.create_endpoint('brought', 'https://hooks.example.com/brought',
                               secret => 'whsec_' || encode(sha256('regress'), 'base64')) AS brought;
SELECT secret = 'whsec_' || encode(sha256('regress'), 'base64') AS stored FROM webhook.endpoint
WHERE name = 'brought';
SELECT webhook.drop_endpoint('brought');

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

-- Capture triggers attached by hand that name an endpoint make drop_endpoint refuse, listing
-- them (2BP01, in errors.sql); force => true removes the endpoint's name from them and keeps
-- everything else about each trigger; a trigger left naming no endpoint is dropped.
SELECT length(webhook.create_endpoint('other', 'https://hooks.example.com/other')) > 0 AS created;
CREATE TRIGGER notes_both AFTER INSERT OR UPDATE OF body ON notes
    FOR EACH ROW WHEN (NEW.body IS DISTINCT FROM 'quiet')
    EXECUTE FUNCTION webhook.capture('plain', 'other');
CREATE TRIGGER notes_plain AFTER DELETE ON notes
    FOR EACH ROW EXECUTE FUNCTION webhook.capture('plain');
ALTER TABLE notes DISABLE TRIGGER notes_both;
COMMENT ON TRIGGER notes_both ON notes IS 'by hand';
SELECT webhook.drop_endpoint('plain');
SELECT webhook.drop_endpoint('plain', force => true);
SELECT tgname, tgenabled, obj_description(oid, 'pg_trigger') AS comment, pg_get_triggerdef(oid)
FROM pg_trigger WHERE tgrelid = 'notes'::regclass ORDER BY tgname;
ALTER TABLE notes ENABLE TRIGGER notes_both;
INSERT INTO notes VALUES (2, 'written');
DELETE FROM notes;
SELECT endpoint, operation FROM webhook.deliveries ORDER BY id;
SELECT webhook.drop_endpoint('other', force => true);
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'notes'::regclass;

DROP TABLE notes;
