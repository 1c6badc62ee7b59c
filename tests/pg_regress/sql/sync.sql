-- Sync runs (SPEC §6): queueing, the view, cancelling, and every error with its SQLSTATE. No
-- worker reads runs in this database, so a run stays queued until it is cancelled.
\set VERBOSITY terse
SELECT length(webhook.create_endpoint('warehouse', 'https://warehouse.example.com/hooks')) > 0 AS created;
CREATE TABLE accounts (id int PRIMARY KEY, name text);
CREATE TABLE events_log (at timestamptz, what text);
INSERT INTO accounts SELECT g, 'account ' || g FROM generate_series(1, 10) g;
SELECT webhook.watch('accounts', 'warehouse') IS NOT NULL AS watching;
-- (tests only: restart run ids so that the one printed in a message below is stable)
ALTER TABLE webhook.sync_run ALTER COLUMN id RESTART;
SELECT webhook.sync('accounts', 'warehouse') > 0 AS queued;
SELECT endpoint, table_name, status, rows_sent, rows_failed, started_at IS NULL AS not_started, error
FROM webhook.sync_runs;
-- One run reads a subscription at a time.
SELECT webhook.sync('accounts', 'warehouse');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.cancel_sync(id) FROM webhook.sync_runs WHERE table_name = 'public.accounts';
SELECT status, finished_at IS NOT NULL AS finished FROM webhook.sync_runs;
SELECT webhook.cancel_sync(id) FROM webhook.sync_runs WHERE table_name = 'public.accounts';
\echo :LAST_ERROR_SQLSTATE

-- Errors.
SELECT webhook.sync('accounts', 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.sync('events_log', 'warehouse');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE keyed_elsewhere (id int PRIMARY KEY);
SELECT webhook.sync('keyed_elsewhere', 'warehouse');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.sync(NULL, 'warehouse');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.cancel_sync(424242);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.cancel_sync(NULL);
\echo :LAST_ERROR_SQLSTATE

DROP TABLE accounts, events_log, keyed_elsewhere;
SELECT webhook.drop_endpoint('warehouse');
SELECT count(*) AS runs_left FROM webhook.sync_runs;
