-- Every error a caller can cause: the message names the bad value and what is accepted, and
-- the SQLSTATE (printed after each error) says what kind of error it is:
--   42704 unknown endpoint, delivery or subscription   42710 duplicate endpoint
--   22023 bad argument value                           22004 NULL argument
--   42703 unknown column                               42P10 no primary key and no lookup
--   55000 wrong state (redeliver, misattached trigger) 42501 insufficient privilege
--   2BP01 endpoint still named by a capture trigger attached by hand
-- A failed call changes nothing: the queued deliveries are checked at the end.
\set VERBOSITY terse
SELECT length(webhook.create_endpoint('crm', 'https://crm.example.com/hooks')) > 0 AS created;
CREATE TABLE users (user_id int PRIMARY KEY, email text, first_name text, hidden text[]);
CREATE TABLE nokey (a int, b text);
SELECT webhook.watch('users', 'crm') IS NOT NULL AS watching;
-- (tests only: restart delivery ids so that the one printed in a message below is stable)
ALTER SEQUENCE webhook.delivery_id_seq RESTART;
INSERT INTO users VALUES (1, 'a@example.com', 'Ann', '{}'), (2, 'b@example.com', 'Bob', '{}');
CREATE TEMP TABLE before AS SELECT id, endpoint, operation, status, payload FROM webhook.deliveries;

-- create_endpoint
SELECT webhook.create_endpoint('crm', 'https://crm.example.com/other');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint(NULL, 'https://crm.example.com/hooks');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint(' ', 'https://crm.example.com/hooks');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint(repeat('x', 64), 'https://crm.example.com/hooks');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint(E'new\nline', 'https://crm.example.com/hooks');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'ftp://files.example.com/drop');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'crm.example.com/hooks');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://user:pw@crm.example.com/hooks');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks#top');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/a b');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/' || repeat('x', 2048));
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', method => 'GET');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', format => 'xml');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', headers => '["Authorization"]');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', headers => '{"X-Retries": 3}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', headers => '{"Bad Name": "x"}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', headers => '{"X-Signature": "forged"}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', headers => '{"webhook-id": "forged"}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', headers => '{"X-A": "x\r\nInjected: 1"}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks',
                               headers => jsonb_build_object('X-Big', repeat('v', 4097)));
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks',
                               headers => (SELECT jsonb_object_agg('X-H' || g, 'v') FROM generate_series(1, 33) g));
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', headers => NULL);
\echo :LAST_ERROR_SQLSTATE
-- A secret brought by the operator: whsec_ + standard base64 (padded) of 24 to 256 bytes. The
-- message names the rule and what is wrong, never the secret.
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', secret => 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', secret => 'whsec_c2hvcnQgc2VjcmV0');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', secret => 'whsec_' || translate(encode(decode(repeat('ab', 257), 'hex'), 'base64'), E'\n', ''));
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2La-_Sw');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', secret => 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw==');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks', secret => '');
\echo :LAST_ERROR_SQLSTATE

-- alter_endpoint, rotate_secret, drop_endpoint, test_endpoint
SELECT webhook.alter_endpoint('nope', enabled => false);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint('crm', url => 'mailto:ops@example.com');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint('crm', method => 'DELETE');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint('crm', format => 'xml');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint('crm', headers => '{"Content-Type": "text/plain"}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.alter_endpoint(NULL, enabled => false);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.rotate_secret('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.rotate_secret(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.rotate_secret('crm', secret => 'whsec_dG9vIHNob3J0');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.rotate_secret('crm', secret => (SELECT secret FROM webhook.endpoint WHERE name = 'crm'));
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.drop_endpoint('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.drop_endpoint('crm', force => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM webhook.test_endpoint('nope');
\echo :LAST_ERROR_SQLSTATE

-- watch
SELECT webhook.watch('users', 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('no_such_table', 'crm');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch(NULL, 'crm');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', events => '{insert,truncate}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', events => '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', events => '{insert,NULL}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', columns => '{user_id,nope}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', columns => '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', rename => '{"nope": "x"}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', rename => '["email"]');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', rename => '{"email": 1}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', rename => '{"email": ""}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', rename => '{"email": "first_name"}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', redact => '{nope}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', redact => '{user_id}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', lookup => '{nope}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', lookup => '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', lookup => '{email}', redact => '{email}');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', visibility_column => 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', visibility_column => 'email');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm', name => '');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('nokey', 'crm');
\echo :LAST_ERROR_SQLSTATE
CREATE VIEW users_view AS SELECT * FROM users;
SELECT webhook.watch('users_view', 'crm');
\echo :LAST_ERROR_SQLSTATE
DROP VIEW users_view;
CREATE TABLE measurements (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
SELECT webhook.watch('measurements', 'crm');
\echo :LAST_ERROR_SQLSTATE
DROP TABLE measurements;

-- unwatch
SELECT webhook.unwatch('nokey', 'crm');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.unwatch('users', 'nope');
\echo :LAST_ERROR_SQLSTATE

-- redeliver, redeliver_failed, purge
SELECT webhook.redeliver(-1);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.redeliver(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.redeliver(min(id)) FROM webhook.deliveries;   -- still pending
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.redeliver_failed('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.purge('pending');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.purge('failed', endpoint => 'nope');
\echo :LAST_ERROR_SQLSTATE

-- capture() attached by hand: an unknown endpoint is an error at the first write, naming the
-- trigger; capture() needs endpoint names and must be an AFTER ... FOR EACH ROW trigger.
CREATE TABLE notes (id int PRIMARY KEY, body text);
-- drop_endpoint refuses while such a trigger names the endpoint, listing each (force => true
-- removes the name from them: endpoints.sql).
CREATE TRIGGER notes_hook AFTER INSERT ON notes FOR EACH ROW EXECUTE FUNCTION webhook.capture('crm');
CREATE TRIGGER "Notes hook 2" AFTER DELETE ON notes FOR EACH ROW EXECUTE FUNCTION webhook.capture('other', 'crm');
SELECT webhook.drop_endpoint('crm');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER "Notes hook 2" ON notes;
SELECT webhook.drop_endpoint('crm');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER notes_hook ON notes;
CREATE TRIGGER notes_hook AFTER INSERT ON notes FOR EACH ROW EXECUTE FUNCTION webhook.capture('ghost');
INSERT INTO notes VALUES (1, 'x');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER notes_hook ON notes;
CREATE TRIGGER notes_hook AFTER INSERT ON notes FOR EACH ROW EXECUTE FUNCTION webhook.capture();
INSERT INTO notes VALUES (1, 'x');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER notes_hook ON notes;
CREATE TRIGGER notes_hook BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION webhook.capture('crm');
INSERT INTO notes VALUES (1, 'x');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER notes_hook ON notes;
CREATE TRIGGER notes_hook AFTER INSERT ON notes FOR EACH STATEMENT EXECUTE FUNCTION webhook.capture('crm');
INSERT INTO notes VALUES (1, 'x');
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER notes_hook ON notes;
SELECT count(*) AS notes FROM notes;   -- each failed write was rolled back

-- Privileges: nothing in schema webhook is granted to PUBLIC; members of webhook_admin manage
-- endpoints and subscriptions, but may only watch tables they can SELECT and attach triggers to.
CREATE ROLE regress_webhook_app;
CREATE ROLE regress_webhook_admin IN ROLE webhook_admin;
SET ROLE regress_webhook_app;
SELECT webhook.create_endpoint('e', 'https://crm.example.com/hooks');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM webhook.deliveries;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_webhook_admin;
SELECT count(*) AS endpoints FROM webhook.endpoints;
SELECT secret FROM webhook.endpoint;
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('users', 'crm');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.unwatch('users', 'crm');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP ROLE regress_webhook_app, regress_webhook_admin;

-- Nothing already queued was lost or changed by the failed calls, and nothing was added.
SELECT (SELECT count(*) FROM before) AS queued_before,
       (SELECT count(*) FROM webhook.deliveries) AS queued_now,
       NOT EXISTS (SELECT id, endpoint, operation, status, payload FROM webhook.deliveries
                   EXCEPT SELECT * FROM before) AS unchanged;
SELECT name, url, enabled FROM webhook.endpoints;
SELECT endpoint, table_name, events, columns, rename, redact, lookup FROM webhook.subscriptions;

SELECT webhook.drop_endpoint('crm');
DROP TABLE users, nokey, notes;
