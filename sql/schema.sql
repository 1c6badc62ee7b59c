-- webhook: the queue and its configuration. Runs first in CREATE EXTENSION webhook.
--
-- The queue table webhook.delivery is the seam between the capture trigger (which only inserts
-- rows) and the delivery worker (which only claims, sends and records). Nothing here is granted
-- to PUBLIC: endpoints hold secrets, deliveries hold row data.

-- Destinations. secret (the current one) is shown once by create_endpoint/rotate_secret and
-- never again; the secrets it replaced are in webhook.previous_secret while they still sign.
CREATE TABLE webhook.endpoint (
    id                         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                       text NOT NULL UNIQUE,
    url                        text NOT NULL,
    method                     text NOT NULL DEFAULT 'POST' CHECK (method IN ('POST', 'PUT', 'PATCH')),
    headers                    jsonb NOT NULL DEFAULT '{}',
    description                text,
    format                     text NOT NULL DEFAULT 'rownd' CHECK (format IN ('rownd', 'census')),
    enabled                    boolean NOT NULL DEFAULT true,
    secret                     text NOT NULL,
    consecutive_failures       integer NOT NULL DEFAULT 0,
    last_success_at            timestamptz,
    last_failure_at            timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    -- Records per request: census up to 1000 (create_endpoint's default 100), rownd always 1.
    batch_size                 integer NOT NULL DEFAULT 1,
    CONSTRAINT endpoint_batch_size_check
        CHECK (batch_size BETWEEN 1 AND 1000 AND (format = 'census' OR batch_size = 1)),
    -- 0.3.0, lifecycle and alert events (SPEC §6): the event types this endpoint receives
    -- (subscribe_events), when its current run of failed attempts began (NULL: its last attempt
    -- succeeded), and when endpoint.alert.raised was sent about it (NULL: no alert open).
    events                     text[] NOT NULL DEFAULT '{}',
    failing_since              timestamptz,
    alert_raised_at            timestamptz,
    -- 'key': deliveries of one subscription and key go one at a time, in commit order (SPEC §7).
    ordering                   text NOT NULL DEFAULT 'none' CHECK (ordering IN ('none', 'key'))
);

-- Secrets rotated out that keep signing until expires_at (webhook.rotation_overlap after the
-- rotation that retired each): webhook-signature carries one entry per live secret, the
-- current one first, then these, last retired first. Rows past expires_at never sign;
-- rotate_secret deletes them.
CREATE TABLE webhook.previous_secret (
    endpoint_id bigint NOT NULL REFERENCES webhook.endpoint (id) ON DELETE CASCADE,
    secret      text NOT NULL,
    retired_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (endpoint_id, secret)
);

-- What one endpoint receives from one table, and in which shape.
CREATE TABLE webhook.subscription (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id       bigint NOT NULL REFERENCES webhook.endpoint (id) ON DELETE CASCADE,
    relid             regclass NOT NULL,
    name              text,          -- census model_name; NULL means schema.table
    events            text[] NOT NULL,
    columns           text[],        -- NULL means every column
    rename            jsonb NOT NULL DEFAULT '{}',
    redact            text[] NOT NULL DEFAULT '{}',
    lookup            text[],        -- NULL means the primary key
    visibility_column text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    -- 0.3.0 (SPEC §2, §5):
    behavior          text CHECK (behavior IN ('append', 'update_or_create', 'mirror')),
    changed           text[],        -- UPDATEs are sent only if one of these columns changed
    predicate         text,          -- as given to watch()
    predicate_node    text,          -- the analysed predicate (nodeToString), evaluated by capture
    -- The columns the options name, each with the attnum and type it had: the DDL guard refuses
    -- dropping, renaming or retyping them. [{"column", "attnum", "type", "options": [...]}]
    guard             jsonb NOT NULL DEFAULT '[]',
    -- WAL capture (SPEC §8): the subscription takes the changes whose LSN is in
    -- [wal_from, wal_until) from the WAL (NULL wal_until: open); NULL wal_from: trigger only.
    wal_from          pg_lsn,
    wal_until         pg_lsn,
    UNIQUE (relid, endpoint_id)
);

-- The queue. One row per (row change, subscription). No foreign keys: the capture path stays
-- one heap insert plus two index inserts; drop_endpoint deletes a dropped endpoint's rows.
--   pending    -> waiting for next_attempt_at
--   delivering -> claimed by a worker; next_attempt_at is the lease expiry, after which any
--                 worker may claim it again (at-least-once delivery)
--   delivered / failed (dead letter, kept until redelivered or purged)
--   batched    -> a census change the worker put into a message: the message is a row of its
--                 own (records = how many changes it carries, payload = the body sent), which
--                 goes through the states above; the change's batch_id points at it.
-- message_id is the webhook-id: capture sets it for a rownd change (its own message); a census
-- change gets its message's when the worker batches it. sync_run_id (NULL: a live change) keeps
-- a sync run's records and live changes out of each other's messages.
CREATE SEQUENCE webhook.delivery_id_seq;
CREATE TABLE webhook.delivery (
    id               bigint PRIMARY KEY DEFAULT nextval('webhook.delivery_id_seq'),
    endpoint_id      bigint NOT NULL,
    subscription_id  bigint,
    table_name       text,
    operation        text NOT NULL,
    payload          text NOT NULL,   -- the exact body bytes that are signed and sent
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivering', 'delivered', 'failed', 'batched')),
    attempts         integer NOT NULL DEFAULT 0,  -- attempts ever made
    cycle_start      integer NOT NULL DEFAULT 0,  -- attempts made before the last redelivery
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    message_id       text,            -- msg_..., the webhook-id (SPEC §3)
    batch_id         bigint,          -- a batched census change: the message row carrying it
    records          integer,         -- a census message row: how many changes it carries
    sync_run_id      bigint,          -- a sync run's record (SPEC §6); NULL for live changes
    -- Ordered endpoints (SPEC §7): a hash of the row's key (the new row's; the old row's for a
    -- delete), and of the old key when an UPDATE changed it. NULL: not ordered.
    order_key        bigint,
    order_key_old    bigint
);
ALTER SEQUENCE webhook.delivery_id_seq OWNED BY webhook.delivery.id;
-- The worker claims per enabled endpoint, oldest due first; id makes the order total, so a claim
-- can resume after the last row it took.
CREATE INDEX delivery_due ON webhook.delivery (endpoint_id, next_attempt_at, id)
    WHERE status IN ('pending', 'delivering');

-- A census message's changes, for the views, redeliver and deletes (never for new rows: capture
-- writes pending ones, so this index costs the write path nothing).
CREATE INDEX delivery_batch ON webhook.delivery (batch_id) WHERE status = 'batched';

-- Ordered endpoints: a delivery may leave only when the one before it of its subscription and
-- key is finished; the claim finds that one through this index. It holds every row; its
-- predicate is an opt-in that only the claim's condition names, so that no other statement's
-- plan can use it (it holds id, and a status test would imply a predicate naming statuses; see
-- worker::claim::PLANNER_SETTINGS).
CREATE INDEX delivery_order ON webhook.delivery (subscription_id, order_key, id)
    WHERE octet_length(status) > 0;

-- Retention finds old delivered rows without scanning the queue.
CREATE INDEX delivery_delivered ON webhook.delivery (delivered_at) WHERE status = 'delivered';


-- Every attempt, with what came back (at most 64 KiB of the body).
CREATE TABLE webhook.attempt (
    delivery_id   bigint NOT NULL,
    attempt       integer NOT NULL,
    started_at    timestamptz NOT NULL,
    duration_ms   double precision,
    status_code   integer,
    error         text,
    response_body text,
    PRIMARY KEY (delivery_id, attempt)
);

-- pg_dump keeps configuration and queue.
-- Sync runs (SPEC §6): the rows a table holds, sent through one subscription. The worker reads
-- them in primary-key chunks, each chunk's deliveries and the run's after_key committed
-- together, so a run resumes after its last chunk whatever stopped it.
--   queued -> reading -> sending -> success | failed;  cancelled from queued/reading/sending
CREATE TABLE webhook.sync_run (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id     bigint NOT NULL REFERENCES webhook.endpoint (id) ON DELETE CASCADE,
    subscription_id bigint,          -- no foreign key: unwatch must not wait for a run being read
    relid           oid NOT NULL,
    table_name      text NOT NULL,   -- schema.table when the run was triggered
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'reading', 'sending', 'success', 'failed', 'cancelled')),
    rows_total      bigint,          -- the planner's estimate when reading began
    rows_queued     bigint NOT NULL DEFAULT 0,
    rows_sent       bigint NOT NULL DEFAULT 0,
    rows_failed     bigint NOT NULL DEFAULT 0,
    after_key       text[],          -- the last primary key read, column by column as text
    triggered_at    timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    error           text,
    events_sent     integer NOT NULL DEFAULT 0,        -- sync.* events queued so far, in order
    events_pending  bigint[] NOT NULL DEFAULT '{}'    -- the deliveries of the last of them
);

-- WAL capture (SPEC §8): per replication slot, the end of the last transaction whose changes
-- the worker queued, written in the same transaction as their deliveries. A transaction the
-- slot returns again after a crash ends at or before it and is skipped.
CREATE TABLE webhook.capture_state (
    slot_name   text PRIMARY KEY,
    applied_lsn pg_lsn NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

SELECT pg_catalog.pg_extension_config_dump('webhook.endpoint', '');
SELECT pg_catalog.pg_extension_config_dump('webhook.previous_secret', '');
SELECT pg_catalog.pg_extension_config_dump('webhook.subscription', '');
SELECT pg_catalog.pg_extension_config_dump('webhook.delivery', '');
SELECT pg_catalog.pg_extension_config_dump('webhook.attempt', '');
SELECT pg_catalog.pg_extension_config_dump('webhook.delivery_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('webhook.sync_run', '');
