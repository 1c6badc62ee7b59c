-- Runs first, once, in a new database: cargo pgrx regress runs setup.sql only when it creates
-- the database, and every other file leaves the database as it found it, so reruns agree.
--
-- No worker delivers from this database: either webhook is not preloaded, or its worker
-- connects to another database (webhook.database). Deliveries stay pending. CREATE EXTENSION
-- warns about that, in words that depend on which of the two it is; the warning is muted here.
SET client_min_messages = error;
CREATE EXTENSION webhook;
RESET client_min_messages;
SELECT extname, extrelocatable, nspname AS schema
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE extname = 'webhook';
