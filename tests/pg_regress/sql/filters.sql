-- Filters (SPEC §5): what capture queues for changed, predicate and behavior, and the DDL
-- guard. Filters act in the capture trigger, so the queue shows exactly what would be sent.
\set VERBOSITY terse
SELECT length(webhook.create_endpoint('shop', 'https://shop.example.com/hooks')) > 0 AS created;
CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric, note text);

-- Only paid orders over 100; only when status or total changes.
SELECT webhook.watch('orders', 'shop', predicate => $$status = 'paid' AND total > 100$$,
                     changed => '{status,total}') IS NOT NULL AS watching;
SELECT name, events, behavior, changed, predicate FROM webhook.subscriptions WHERE endpoint = 'shop';
INSERT INTO orders VALUES (1, 'paid', 150, 'a'), (2, 'open', 150, 'b'), (3, 'paid', 50, 'c');
UPDATE orders SET note = 'gift wrap' WHERE id = 1;      -- not a changed column: nothing
UPDATE orders SET total = total WHERE id = 1;           -- changes nothing: nothing
UPDATE orders SET total = 200 WHERE id = 1;             -- data_update
UPDATE orders SET status = 'refunded' WHERE id = 1;     -- leaves the predicate: delete
UPDATE orders SET status = 'paid' WHERE id = 2;         -- enters it: insert
DELETE FROM orders WHERE id = 3;                        -- never matched: nothing
SELECT operation, payload->'data' AS data, payload->'meta'->'changed_fields' AS changed_fields
FROM webhook.deliveries WHERE endpoint = 'shop' ORDER BY id;

-- Predicates are checked when watch is called; a refused one changes nothing.
SELECT webhook.watch('orders', 'shop', predicate => 'nope > 1');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('orders', 'shop', predicate => 'total');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('orders', 'shop', predicate => 'id IN (SELECT 1)');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('orders', 'shop', predicate => 'count(*) > 0');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('orders', 'shop', predicate => 'random() < 0.5');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('orders', 'shop', predicate => 'true FROM pg_class');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('orders', 'shop', predicate => 'status =');
\echo :LAST_ERROR_SQLSTATE
SELECT webhook.watch('orders', 'shop', behavior => 'mirror', events => '{insert}');
\echo :LAST_ERROR_SQLSTATE
SELECT predicate FROM webhook.subscriptions WHERE endpoint = 'shop';

-- The DDL guard: a column the subscription names cannot be dropped, renamed or retyped.
ALTER TABLE orders DROP COLUMN status;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE orders RENAME COLUMN total TO amount;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE orders ALTER COLUMN total TYPE float8;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE orders DROP CONSTRAINT orders_pkey;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE orders DROP COLUMN note;                    -- named nowhere: allowed

-- Behaviours: mirror sends inserts, updates of a sent value, and deletes.
SELECT webhook.watch('orders', 'shop', behavior => 'mirror', columns => '{id,status}') IS NOT NULL AS watching;
DELETE FROM webhook.delivery WHERE endpoint_id = (SELECT id FROM webhook.endpoint WHERE name = 'shop');  -- (tests only)
UPDATE orders SET total = 1 WHERE id = 2;              -- no sent column changed: nothing
UPDATE orders SET status = 'shipped' WHERE id = 2;
DELETE FROM orders WHERE id = 2;
SELECT operation, payload->'data' AS data FROM webhook.deliveries WHERE endpoint = 'shop' ORDER BY id;

DROP TABLE orders;
SELECT count(*) AS subscriptions_left FROM webhook.subscriptions WHERE endpoint = 'shop';
SELECT webhook.drop_endpoint('shop');
