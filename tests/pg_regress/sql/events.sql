-- subscribe_events (SPEC §6): replaces the set, '{}' clears it; bad input is an ERROR naming
-- the value and the accepted ones, with its SQLSTATE, and changes nothing. Also the health
-- views' shape (no worker delivers from this database: webhook.workers lists the cluster's).
\set VERBOSITY terse
SELECT length(webhook.create_endpoint('ops', 'https://ops.example.com/events')) > 0 AS created;
SELECT webhook.subscribe_events('ops', ARRAY['endpoint.alert.raised', 'delivery.failed', 'endpoint.alert.raised']);
SELECT name, events FROM webhook.endpoints WHERE name = 'ops';
SELECT webhook.subscribe_events('ops', ARRAY['sync.triggered', 'sync.started', 'sync.completed',
    'sync.success', 'sync.failed', 'endpoint.alert.raised', 'endpoint.alert.resolved',
    'endpoint.disabled', 'delivery.failed', 'capture.lag.raised', 'capture.lag.resolved']);
SELECT cardinality(events) FROM webhook.endpoints WHERE name = 'ops';
SELECT webhook.subscribe_events('ops', ARRAY['delivery.failed']);

-- Errors: nothing changes.
SELECT webhook.subscribe_events('ops', ARRAY['delivery.failed', 'endpoint.down']);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.subscribe_events('ops', ARRAY['Delivery.Failed']);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.subscribe_events('nope', ARRAY['delivery.failed']);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.subscribe_events(NULL, ARRAY['delivery.failed']);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.subscribe_events('ops', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.subscribe_events('ops', ARRAY[NULL]::text[]);
\echo :LAST_ERROR_SQLSTATE
SELECT name, events FROM webhook.endpoints WHERE name = 'ops';

-- '{}' clears the set.
SELECT webhook.subscribe_events('ops', '{}');
SELECT name, events FROM webhook.endpoints WHERE name = 'ops';

-- Health columns.
SELECT endpoint, pending, oldest_due_age FROM webhook.endpoint_stats WHERE endpoint = 'ops';
SELECT column_name, data_type FROM information_schema.columns
WHERE table_schema = 'webhook' AND table_name = 'workers' ORDER BY ordinal_position;
SELECT count(*) >= 0 AS readable FROM webhook.workers;

SELECT webhook.drop_endpoint('ops');
