"""WAL capture (SPEC §8, `webhook.capture = 'wal'`) end to end: what only this mode has.

The payload, filter and census tests run in both modes (marked both_modes in their files); here:
DDL between changes read back after the ALTER, the DDL guard and the replica identity, rollbacks,
the old row of updates and deletes, commit time, the lag view and its events, kill -9 of the
capture worker and an immediate shutdown mid-burst, DROP EXTENSION, hand-attached triggers, mode
switches with restarts, a server without wal_level = logical, the server log's volume, and
subscriptions naming a column newer than changes the worker has yet to read.
Tests using `db` run against the session's WAL cluster; the others start a cluster of their own."""
import contextlib
import datetime
import json
import os
import signal
import threading
import time

import psycopg
import pytest

from conftest import (SETTINGS, WAL_SETTINGS, endpoint, in_capture_order, make_table, one, settle,
                      wait_until, watched)
from harness import Cluster, Receiver, verify

pytestmark = pytest.mark.wal_mode

CAPTURE_WORKER = "webhook capture worker"


def queued(db, ep):
    """(operation, payload) of what capture queued for the endpoint, once the worker has read
    everything committed so far."""
    settle(db)
    return db.execute("SELECT operation, payload FROM webhook.deliveries WHERE endpoint = %s ORDER BY id",
                      (ep,)).fetchall()


def body_without_meta_ids(req):
    body = req.json()
    for key in ("id", "occurred_at", "table"):
        body["meta"].pop(key)
    return body


def capture_pid(conn):
    return one(conn, "SELECT pid FROM pg_stat_activity WHERE backend_type = %s", CAPTURE_WORKER)


def slot_name(conn):
    return "webhook_" + str(one(conn, "SELECT oid FROM pg_database WHERE datname = current_database()"))


@contextlib.contextmanager
def capture_held(cluster, db):
    """Keep the capture worker from reading while the block runs: a session holds the lock on
    webhook.capture_state that each read starts with. On leaving, the worker must be waiting
    for that lock (it tried to read what the block committed), then it is let go."""
    with cluster.connect(autocommit=False) as lock:
        lock.execute("LOCK TABLE webhook.capture_state IN ACCESS EXCLUSIVE MODE")
        # A worker that took a table's lock before this one would block the block's DDL for
        # good: fail in seconds instead.
        db.execute("SET lock_timeout = '10s'")
        try:
            yield
        finally:
            db.execute("RESET lock_timeout")
        wait_until(lambda: one(db, "SELECT wait_event_type FROM pg_stat_activity WHERE backend_type = %s",
                               CAPTURE_WORKER) == "Lock", 10, "the capture worker to wait for the held lock")
        lock.rollback()


@contextlib.contextmanager
def own_watched_cluster(settings, table):
    """own_cluster with the extension and a table `table` (id, v) watched by an endpoint of the
    same name at a receiver of its own (/ok/<table>); yields (cluster, receiver)."""
    receiver = Receiver()
    try:
        with own_cluster(settings) as cluster:
            with cluster.connect() as db:
                db.execute("CREATE EXTENSION webhook")
                make_table(db, table)
                endpoint(db, table, receiver.url(f"/ok/{table}"))
                db.execute("SELECT webhook.watch(%s, %s)", (table, table))
            yield cluster, receiver
    finally:
        receiver.close()


@contextlib.contextmanager
def own_cluster(settings):
    """A started cluster of the test's own; on a failure its server log's tail is printed (the
    report shows it), and it is removed in any case."""
    cluster = Cluster(settings).start()
    try:
        yield cluster
    except BaseException:
        print(f"--- server log of the test's own cluster (last 80 lines) ---\n{cluster.log_tail(80)}")
        raise
    finally:
        cluster.cleanup()


# --- DDL -------------------------------------------------------------------------------------

@pytest.mark.parametrize("reader", ["held", "live"])
def test_ddl_between_changes_shows_change_by_change(cluster, db, receiver, name, reader):
    """ADD, DROP, RENAME and retype of columns no subscription names, between changes: each
    change is sent with the columns it was made with. `held`: the worker reads them all only
    after the last ALTER (nothing is queued before); `live`: it reads as they come."""
    watched(db, receiver, name, ddl="id int PRIMARY KEY, a text, b int, c text")
    statements = [
        f"INSERT INTO {name} VALUES (1, 'x', 1, 'c1')",
        f"ALTER TABLE {name} ADD COLUMN d int DEFAULT 7",
        f"UPDATE {name} SET a = 'y' WHERE id = 1",
        f"ALTER TABLE {name} DROP COLUMN c",
        f"INSERT INTO {name} VALUES (2, 'z', 2)",
        f"ALTER TABLE {name} RENAME COLUMN b TO bb",
        f"INSERT INTO {name} VALUES (3, 'w', 3)",
        f"ALTER TABLE {name} ALTER COLUMN bb TYPE text USING 'n' || bb::text",
        f"UPDATE {name} SET bb = 'q' WHERE id = 1",
        f"DELETE FROM {name} WHERE id = 2",
    ]
    with capture_held(cluster, db) if reader == "held" else contextlib.nullcontext():
        for statement in statements:
            db.execute(statement)
        if reader == "held":
            assert one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", name) == 0
    got = [body_without_meta_ids(r) for r in in_capture_order(db, receiver.wait_for(6, f"/ok/{name}"))]

    def lookup(key):
        return [{"field": "id", "value": key}]
    assert got == [
        {"data": {"id": 1, "a": "x", "b": 1, "c": "c1"}, "redacted": [],
         "meta": {"operation": "data_insert", "lookup_values": lookup(1)}},
        {"data": {"id": 1, "a": "y", "b": 1, "c": "c1", "d": 7}, "redacted": [],
         "meta": {"operation": "data_update", "lookup_values": lookup(1), "changed_fields": ["a"]}},
        {"data": {"id": 2, "a": "z", "b": 2, "d": 7}, "redacted": [],
         "meta": {"operation": "data_insert", "lookup_values": lookup(2)}},
        {"data": {"id": 3, "a": "w", "bb": 3, "d": 7}, "redacted": [],
         "meta": {"operation": "data_insert", "lookup_values": lookup(3)}},
        {"data": {"id": 1, "a": "y", "bb": "q", "d": 7}, "redacted": [],
         "meta": {"operation": "data_update", "lookup_values": lookup(1), "changed_fields": ["bb"]}},
        {"data": {"id": 2}, "meta": {"operation": "delete", "lookup_values": lookup(2)}},
    ]
    assert len(queued(db, name)) == 6


def test_options_naming_a_column_newer_than_unread_changes_do_not_stop_capture(cluster, db, receiver, name):
    """Changes made before ADD COLUMN n, read only after watch calls whose options name n (the
    worker was behind): capture goes on, for this table and the others, in the same worker
    process. B's subscription starts after row 1, so B gets row 2 only; A (watched before row 1,
    then again with a predicate on n) gets row 2, and row 1 at most once."""
    other = f"{name}_other"
    watched(db, receiver, other)
    a, b = f"{name}_a", f"{name}_b"
    make_table(db, name)
    endpoint(db, a, receiver.url(f"/ok/{name}/a"))
    endpoint(db, b, receiver.url(f"/ok/{name}/b"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, a))
    settle(db)
    pid = capture_pid(db)
    try:
        with capture_held(cluster, db):
            db.execute(f"INSERT INTO {name} VALUES (1, 'before n')")
            db.execute(f"ALTER TABLE {name} ADD COLUMN n int")
            db.execute("SELECT webhook.watch(%s, %s, predicate => 'n > 0')", (name, a))
            db.execute("SELECT webhook.watch(%s, %s, columns => '{id,n}', lookup => '{n}')", (name, b))
            db.execute(f"INSERT INTO {name} VALUES (2, 'after n', 5)")
            db.execute(f"INSERT INTO {other} VALUES (1, 'other table')")
        assert receiver.wait_for(1, f"/ok/{other}")[0].json()["data"] == {"id": 1, "v": "other table"}
        assert [(op, p["data"]) for op, p in queued(db, b)] == [("data_insert", {"id": 2, "n": 5})]
        sent_a = [p["data"]["id"] for _, p in queued(db, a)]
        assert sent_a in ([2], [1, 2]), sent_a
        assert capture_pid(db) == pid, "the capture worker was restarted"
    finally:
        db.execute(f"DROP TABLE IF EXISTS {name}")  # what WAL capture cannot take must not stay in its way

def test_ddl_guard_refuses_breaking_ddl_and_a_weaker_replica_identity(db, receiver, name):
    watched(db, receiver, name, ddl="id int PRIMARY KEY, a text, b text", columns=["id", "a"])
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as e:
        db.execute(f"ALTER TABLE {name} DROP COLUMN a")
    assert 'cannot drop column "a"' in str(e.value) and f'of endpoint "{name}"' in str(e.value)
    db.execute(f"CREATE UNIQUE INDEX {name}_a ON {name} (a)")
    db.execute(f"ALTER TABLE {name} ALTER COLUMN a SET NOT NULL")
    for identity in ("DEFAULT", "NOTHING", f"USING INDEX {name}_a"):
        with pytest.raises(psycopg.errors.DependentObjectsStillExist) as e:
            db.execute(f"ALTER TABLE {name} REPLICA IDENTITY {identity}")
        assert "cannot change the replica identity" in str(e.value) and "unwatch it first" in str(e.value)
        assert one(db, "SELECT relreplident FROM pg_class WHERE oid = %s::regclass", name) == "f"
    # Nothing refused was half done: changes still carry the old row.
    db.execute(f"INSERT INTO {name} VALUES (1, 'a', 'b')")
    db.execute(f"DELETE FROM {name}")
    assert [(op, p["data"]) for op, p in queued(db, name)] == [("data_insert", {"id": 1, "a": "a"}),
                                                               ("delete", {"id": 1})]
    db.execute("SELECT webhook.unwatch(%s, %s)", (name, name))
    db.execute(f"ALTER TABLE {name} REPLICA IDENTITY DEFAULT")  # no longer captured: allowed
    db.execute(f"ALTER TABLE {name} DROP COLUMN a")


# --- what is sent ----------------------------------------------------------------------------

def test_rolled_back_changes_send_nothing_even_when_decoding_spilled_them(cluster, db, receiver, name):
    """A rolled-back transaction (large enough that decoding spilled it to disk), a savepoint
    rolled back inside a committed one, and a transaction ended by an error queue nothing; a
    committed transaction spilled the same way is queued whole."""
    watched(db, receiver, name, ddl="id int PRIMARY KEY, v text")
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))  # check the queue only
    cluster.set("logical_decoding_work_mem", "64kB")
    try:
        with cluster.connect(autocommit=False) as tx:
            tx.execute(f"INSERT INTO {name} SELECT g, repeat('r', 100) FROM generate_series(100000, 104999) g")
            tx.rollback()
            tx.execute(f"INSERT INTO {name} SELECT g, repeat('c', 100) FROM generate_series(1, 3000) g")
            tx.commit()
            tx.execute(f"INSERT INTO {name} VALUES (5001, 'before savepoint')")
            tx.execute("SAVEPOINT s")
            tx.execute(f"INSERT INTO {name} SELECT g, 'in savepoint' FROM generate_series(200000, 200999) g")
            tx.execute("ROLLBACK TO SAVEPOINT s")
            tx.execute(f"INSERT INTO {name} VALUES (5002, 'after savepoint')")
            tx.commit()
            tx.execute(f"INSERT INTO {name} SELECT g, 'failed' FROM generate_series(300000, 300999) g")
            with pytest.raises(psycopg.errors.UniqueViolation):
                tx.execute(f"INSERT INTO {name} VALUES (1, 'duplicate key')")
            tx.rollback()
        ids = [p["data"]["id"] for _, p in queued(db, name)]
        assert ids == list(range(1, 3001)) + [5001, 5002]
    finally:
        cluster.reset("logical_decoding_work_mem")
        db.execute("SELECT webhook.drop_endpoint(%s)", (name,))
        db.execute(f"DROP TABLE {name}")


def test_watch_sets_replica_identity_full_and_old_rows_are_sent(db, receiver, name):
    """watch sets REPLICA IDENTITY FULL, saying so in a NOTICE (once); an UPDATE that leaves a
    TOASTed value alone still sends it, changed_fields needs the old row, and a delete's
    lookup value (a non-key column) comes from it."""
    make_table(db, name, "id int PRIMARY KEY, email text, big text, n int")
    secret = endpoint(db, name, receiver.url(f"/ok/{name}"))
    notices = []
    db.add_notice_handler(lambda d: notices.append(d.message_primary))
    assert one(db, "SELECT relreplident FROM pg_class WHERE oid = %s::regclass", name) == "d"
    db.execute("SELECT webhook.watch(%s, %s, lookup => '{email}')", (name, name))
    assert one(db, "SELECT relreplident FROM pg_class WHERE oid = %s::regclass", name) == "f"
    said = [n for n in notices if "REPLICA IDENTITY FULL" in n]
    assert len(said) == 1 and name in said[0] and "webhook.capture = 'wal'" in said[0], notices
    db.execute("SELECT webhook.watch(%s, %s, lookup => '{email}')", (name, name))
    assert len([n for n in notices if "REPLICA IDENTITY FULL" in n]) == 1  # already FULL: no notice
    big = os.urandom(100_000).hex()  # incompressible enough to be stored out of line
    db.execute(f"INSERT INTO {name} VALUES (1, 'a@x.y', %s, 1)", (big,))
    assert one(db, "SELECT pg_relation_size(reltoastrelid) FROM pg_class WHERE oid = %s::regclass", name) > 100_000
    db.execute(f"UPDATE {name} SET n = 2")
    db.execute(f"UPDATE {name} SET email = 'b@x.y'")
    db.execute(f"DELETE FROM {name}")
    got = in_capture_order(db, receiver.wait_for(4, f"/ok/{name}"))
    assert all(verify(r, secret) == (True, True) for r in got)
    bodies = [body_without_meta_ids(r) for r in got]
    assert [(b["meta"]["operation"], b["meta"].get("changed_fields")) for b in bodies] == [
        ("data_insert", None), ("data_update", ["n"]), ("data_update", ["email"]), ("delete", None)]
    assert bodies[1]["data"] == {"id": 1, "email": "a@x.y", "big": big, "n": 2}
    assert bodies[2]["data"] == {"id": 1, "email": "b@x.y", "big": big, "n": 2}
    assert bodies[3] == {"data": {"id": 1},
                         "meta": {"operation": "delete", "lookup_values": [{"field": "email", "value": "b@x.y"}]}}


def test_occurred_at_is_the_commit_time(cluster, db, receiver, name):
    """In WAL mode meta.occurred_at is the transaction's commit time, the same for each of its
    changes: after everything the transaction did, not its start (as the trigger sends)."""
    watched(db, receiver, name)
    with cluster.connect(autocommit=False) as tx:
        started = one(tx, "SELECT now()")
        tx.execute(f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b')")
        tx.execute("SELECT pg_sleep(0.3)")
        tx.execute(f"UPDATE {name} SET v = 'c' WHERE id = 1")
        before_commit = one(tx, "SELECT clock_timestamp()")
        tx.commit()
    after_commit = one(db, "SELECT clock_timestamp()")
    got = receiver.wait_for(3, f"/ok/{name}")
    stamps = {datetime.datetime.fromisoformat(r.json()["meta"]["occurred_at"].replace("Z", "+00:00")) for r in got}
    assert len(stamps) == 1, stamps
    (stamp,) = stamps
    assert started + datetime.timedelta(seconds=0.3) <= before_commit <= stamp <= after_commit, (started, stamp)


def test_hand_attached_trigger_captures_its_endpoint_and_the_wal_the_others(db, receiver, name):
    """A table with a capture('A') trigger attached by hand: A gets each change once, from the
    trigger (with A's subscription options), and endpoint B watched on the same table gets each
    change once, from the WAL."""
    make_table(db, name)
    a, b = f"{name}_a", f"{name}_b"
    endpoint(db, a, receiver.url(f"/ok/{name}/a"))
    endpoint(db, b, receiver.url(f"/ok/{name}/b"))
    db.execute(f"CREATE TRIGGER by_hand AFTER INSERT OR UPDATE OR DELETE ON {name}"
               f" FOR EACH ROW EXECUTE FUNCTION webhook.capture('{a}')")
    db.execute("SELECT webhook.watch(%s, %s, rename => %s)", (name, a, json.dumps({"v": "V"})))
    db.execute("SELECT webhook.watch(%s, %s)", (name, b))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    db.execute(f"UPDATE {name} SET v = 'y'")
    db.execute(f"DELETE FROM {name}")
    db.execute(f"INSERT INTO {name} VALUES (2, 'z')")
    expected = [("data_insert", 1), ("data_update", 1), ("delete", 1), ("data_insert", 2)]
    assert [(op, p["data"]["id"]) for op, p in queued(db, a)] == expected
    assert [(op, p["data"]["id"]) for op, p in queued(db, b)] == expected
    got_a = in_capture_order(db, receiver.wait_for(4, f"/ok/{name}/a"))
    got_b = in_capture_order(db, receiver.wait_for(4, f"/ok/{name}/b"))
    assert [r.json()["data"] for r in got_a] == [{"id": 1, "V": "x"}, {"id": 1, "V": "y"}, {"id": 1},
                                                 {"id": 2, "V": "z"}]
    assert [r.json()["data"] for r in got_b] == [{"id": 1, "v": "x"}, {"id": 1, "v": "y"}, {"id": 1},
                                                 {"id": 2, "v": "z"}]
    assert len({r.headers["webhook-id"] for r in got_a + got_b}) == 8


# --- the slot's lag --------------------------------------------------------------------------

def lag(db):
    return db.execute("SELECT slot_name, mode, wal_status, lag_bytes, lag_ms, retained_bytes"
                      " FROM webhook.capture_lag").fetchall()


def test_capture_lag_view(cluster, db, receiver, name):
    """One row for the slot: reserved, and a few bytes and milliseconds behind once the worker has
    read; while it cannot read, lag_bytes holds what was written since and lag_ms grows; then it
    catches up."""
    watched(db, receiver, name)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    settle(db)
    ((slot, mode, status, lag_bytes, lag_ms, retained),) = lag(db)
    assert (slot, mode, status) == (slot_name(db), "wal", "reserved")
    assert 0 <= lag_bytes < 64 * 1024 and lag_bytes <= retained
    assert lag_ms is not None and 0 <= lag_ms < 1000
    try:
        with capture_held(cluster, db):
            start = one(db, "SELECT pg_current_wal_lsn()")
            db.execute(f"INSERT INTO {name} SELECT g, repeat('x', 100) FROM generate_series(1, 2000) g")
            written = one(db, "SELECT pg_current_wal_lsn() - %s::pg_lsn", start)
            assert written > 200_000
            wait_until(lambda: lag(db)[0][4] >= 1000, 10, "lag_ms to grow while the worker cannot read")
            (_, _, status, lag_bytes, lag_ms, retained), = lag(db)
            assert status == "reserved" and lag_bytes >= written and retained >= lag_bytes
        settle(db)
        wait_until(lambda: lag(db)[0][3] < 64 * 1024 and lag(db)[0][4] < 1000, 10, "the lag to go back down")
        assert one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", name) == 2000
    finally:
        db.execute("SELECT webhook.drop_endpoint(%s)", (name,))
        db.execute(f"DROP TABLE {name}")


def test_capture_lag_events_raise_once_and_resolve_once(cluster, db, receiver, name):
    """With webhook.capture_lag_alert = 64kB, WAL written faster than the worker confirms it
    raises capture.lag.raised once; when the writing stops, capture.lag.resolved follows once.
    Both signed, with exactly SPEC §6's keys."""
    watcher = endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.subscribe_events(%s, %s)", (name, ["capture.lag.raised", "capture.lag.resolved"]))
    make_table(db, f"{name}_filler", "id bigserial PRIMARY KEY, v text")  # not watched: WAL only
    cluster.set("webhook.capture_lag_alert", "64kB")
    try:
        assert one(db, "SELECT alert_bytes FROM webhook.capture_lag") == 65536
        deadline = time.monotonic() + 20
        while not receiver.received(f"/ok/{name}"):
            assert time.monotonic() < deadline, "no capture.lag.raised within 20 s of writing WAL"
            db.execute(f"INSERT INTO {name}_filler (v) SELECT repeat('w', 200) FROM generate_series(1, 2000)")
        got = receiver.wait_for(2, f"/ok/{name}", timeout=20)
        time.sleep(1.5)  # the worker looks once a second: no second raise or resolve
        got = receiver.received(f"/ok/{name}")
        events = []
        for r in got:
            assert verify(r, watcher) == (True, True)
            body = r.json()
            assert set(body) == {"type", "timestamp", "data"} and set(body["data"]) == {"lag_bytes", "lag_ms"}, body
            events.append(body)
        assert [e["type"] for e in events] == ["capture.lag.raised", "capture.lag.resolved"]
        raised, resolved = (e["data"] for e in events)
        assert raised["lag_bytes"] > 65536 and isinstance(raised["lag_ms"], int)
        assert 0 <= resolved["lag_bytes"] <= 65536 and isinstance(resolved["lag_ms"], int)
    finally:
        cluster.reset("webhook.capture_lag_alert")
        db.execute("SELECT webhook.drop_endpoint(%s)", (name,))
        db.execute(f"DROP TABLE {name}_filler")


def test_starting_logical_decoding_does_not_flood_the_server_log(cluster, db, receiver, name):
    """Each read of the slot (and each move of it) starts logical decoding, which PostgreSQL logs
    at LOG with a DETAIL: 100 commits, each read on its own (the next one waits until it is
    queued), must not write a hundred such pairs into the server log."""
    watched(db, receiver, name)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    settle(db)
    before = cluster.log_text().count("starting logical decoding for slot")
    for i in range(100):
        db.execute(f"INSERT INTO {name} VALUES (%s, 'x')", (i,))
        wait_until(lambda: one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", name) == i + 1,
                   10, f"change {i} to be queued", poll=0.002)
    logged = cluster.log_text().count("starting logical decoding for slot") - before
    assert logged < 5, f"{logged} 'starting logical decoding' lines for 100 commits"
    db.execute("SELECT webhook.drop_endpoint(%s)", (name,))


# --- faults, lifecycle and mode switches (clusters of their own) -------------------------------

class Writer(threading.Thread):
    """Inserts rows into `table` in transactions of `per_tx` rows until `total` rows committed
    (or `stop` is set), every 10th transaction rolled back (ids from ROLLED_BACK up) when
    `rollbacks`; reconnects after connection loss. `confirmed` holds the ids whose COMMIT
    returned; a commit cut by a crash may or may not have happened (the table tells)."""

    ROLLED_BACK = 10_000_000

    def __init__(self, cluster, table, total=None, per_tx=1, rollbacks=False, pause=0.002, timeout=120):
        super().__init__(daemon=True)
        self.cluster, self.table, self.total, self.per_tx = cluster, table, total, per_tx
        self.rollbacks, self.pause = rollbacks, pause
        self.next_id, self.next_rb = 1, self.ROLLED_BACK
        self.confirmed = []
        self.errors = 0
        self.commits = 0
        self.last_commit = None
        self.stop = threading.Event()
        self.deadline = time.monotonic() + timeout

    def run(self):
        conn, tx = None, 0
        while not self.stop.is_set() and time.monotonic() < self.deadline and \
                (self.total is None or self.next_id <= self.total):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.cluster.dsn(), connect_timeout=2)
                rollback = self.rollbacks and tx % 10 == 9
                if rollback:
                    ids = list(range(self.next_rb, self.next_rb + self.per_tx))
                    self.next_rb += self.per_tx
                else:
                    ids = list(range(self.next_id, self.next_id + self.per_tx))
                    self.next_id += self.per_tx  # never reused: an uncertain commit is skipped
                with conn.transaction(force_rollback=rollback):
                    conn.execute(f"INSERT INTO {self.table} SELECT g, 'v' FROM unnest(%s::int[]) g", (ids,))
                if not rollback:
                    self.confirmed.extend(ids)
                    self.commits += 1
                    self.last_commit = time.monotonic()
                tx += 1
                time.sleep(self.pause)
            except psycopg.Error:
                self.errors += 1
                conn = None
                time.sleep(0.1)
        if conn is not None:
            conn.close()


def try_one(cluster, sql, *args):
    """One value, or None while the server is down or restarting."""
    try:
        with psycopg.connect(cluster.dsn(), connect_timeout=2) as c:
            return one(c, sql, *args)
    except psycopg.Error:
        return None


def check_exactly_once(cluster, receiver, table, path, timeout=60):
    """Every row the table holds was queued exactly once and arrived, each with one webhook-id;
    nothing else arrived. Returns (rows, requests)."""
    with cluster.connect() as db:
        rows = {r[0] for r in db.execute(f"SELECT id FROM {table}")}
        settle(db)
        per_row = dict(db.execute("SELECT (payload->'data'->>'id')::int, count(*) FROM webhook.deliveries"
                                  " WHERE table_name = %s GROUP BY 1", (f"public.{table}",)).fetchall())
    assert set(per_row) == rows, (len(rows - set(per_row)), "lost", sorted(set(per_row) - rows)[:10], "not committed")
    assert {k: n for k, n in per_row.items() if n > 1} == {}, "changes queued twice"
    ids, seen = {}, [0]

    def arrived():
        got = receiver.received(path)
        for r in got[seen[0]:]:
            ids.setdefault(r.json()["data"]["id"], set()).add(r.headers["webhook-id"])
        seen[0] = len(got)
        return set(ids) >= rows
    wait_until(arrived, timeout, "every committed change to arrive", poll=0.2)
    assert set(ids) == rows
    assert {k: v for k, v in ids.items() if len(v) > 1} == {}, "a change sent under two webhook-ids"
    return rows, receiver.received(path)


def test_kill_capture_worker_and_immediate_stop_mid_burst():
    """2,000 rows in 4-row transactions (every tenth rolled back) while the capture worker is
    killed with SIGKILL (a crash-restart) and the cluster is stopped with -m immediate, each
    while the writer is committing: every committed row is queued once and arrives under one
    webhook-id (the transactions read again after each crash are skipped), no rolled-back row."""
    with own_watched_cluster({**WAL_SETTINGS, "restart_after_crash": "on"}, "burst") as (cluster, receiver):
        burst(cluster, receiver)


def burst(cluster, receiver):
    """The body of test_kill_capture_worker_and_immediate_stop_mid_burst."""
    with cluster.connect() as db:
        first = capture_pid(db)
    writer = Writer(cluster, "burst", total=2000, per_tx=4, rollbacks=True, pause=0.004)
    writer.start()
    pids = [first]

    def mid_stream(fraction):
        wait_until(lambda: writer.next_id > 2000 * fraction, 60, f"the writer to reach {fraction:.0%}", poll=0.005)
        assert writer.is_alive() and time.monotonic() - writer.last_commit < 0.5, "the writer is not committing"
        return writer.commits, writer.errors

    def cut_and_resumed(commits, errors):
        wait_until(lambda: writer.errors > errors and writer.commits > commits, 30,
                   "the writer to be cut by the fault and commit again", poll=0.01)

    before = mid_stream(1 / 3)
    with cluster.connect() as db:  # queued but not yet confirmed to the slot: read again after the crash
        unconfirmed = one(db, "SELECT s.applied_lsn - r.confirmed_flush_lsn FROM webhook.capture_state s"
                              " JOIN pg_replication_slots r USING (slot_name)")
    os.kill(pids[0], signal.SIGKILL)
    cut_and_resumed(*before)
    pids.append(wait_until(lambda: (lambda p: p if p and p != pids[0] else None)(
        try_one(cluster, "SELECT pid FROM pg_stat_activity WHERE backend_type = %s", CAPTURE_WORKER)),
        30, "a new capture worker after kill -9"))
    before = mid_stream(2 / 3)
    cluster.stop("immediate")
    cluster.start()
    cut_and_resumed(*before)
    writer.join(timeout=120)
    assert not writer.is_alive() and writer.next_id > 2000
    rows, requests = check_exactly_once(cluster, receiver, "burst", "/ok/burst")
    assert set(writer.confirmed) <= rows and len(rows) >= 2000 - 4 * writer.errors
    assert max(rows) < Writer.ROLLED_BACK
    print(f"\nWAL fault burst: {len(rows)} committed rows, {len(requests)} requests "
          f"({len(requests) - len(rows)} resent after a crash, same webhook-id), {writer.errors} writer "
          f"errors, capture worker pids {pids}; {unconfirmed} bytes of WAL queued but unconfirmed at the kill")


def test_drop_extension_drops_slot_and_publication():
    """DROP EXTENSION cannot drop a slot itself: the capture worker drops slot and publication
    within about a second; CREATE EXTENSION again makes new ones and capture works."""
    receiver = Receiver()
    with own_cluster(WAL_SETTINGS) as cluster, cluster.connect() as db:
        db.execute("CREATE EXTENSION webhook")
        wait_until(lambda: one(db, "SELECT count(*) FROM webhook.capture_lag") == 1, 10, "the slot")
        slot = slot_name(db)
        db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        endpoint(db, "e", receiver.url("/ok/drop"))
        db.execute("SELECT webhook.watch('t', 'e')")
        assert one(db, "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'webhook_capture'"
                       " AND tablename = 't'") == 1

        def objects():
            return (one(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", slot),
                    one(db, "SELECT count(*) FROM pg_publication WHERE pubname = 'webhook_capture'"))
        assert objects() == (1, 1)
        db.execute("DROP EXTENSION webhook CASCADE")
        started = time.monotonic()
        wait_until(lambda: objects() == (0, 0), 5, "the slot and the publication to be dropped", poll=0.02)
        print(f"\nslot and publication dropped {time.monotonic() - started:.2f} s after DROP EXTENSION")
        assert "dropped the WAL capture's slot and publication" in cluster.log_text()
        db.execute("CREATE EXTENSION webhook")
        wait_until(lambda: objects() == (1, 1), 10, "a new slot and publication")
        endpoint(db, "e", receiver.url("/ok/drop"))
        db.execute("SELECT webhook.watch('t', 'e')")
        db.execute("INSERT INTO t VALUES (1, 'after re-create')")
        assert receiver.wait_for(1, "/ok/drop")[0].json()["data"] == {"id": 1, "v": "after re-create"}
    receiver.close()


def test_watch_without_wal_level_logical():
    """webhook.capture = 'wal' with wal_level = replica: watch fails with 55000 naming wal_level
    and stores nothing; the capture worker says so in the server log; writes go on."""
    with own_cluster({**SETTINGS, "webhook.capture": "'wal'", "wal_level": "replica"}) as cluster, \
            cluster.connect() as db:
        db.execute("CREATE EXTENSION webhook")
        db.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        endpoint(db, "e", "http://127.0.0.1:9/")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as e:
            db.execute("SELECT webhook.watch('t', 'e')")
        assert e.value.sqlstate == "55000"
        message = e.value.diag.message_primary
        assert "wal_level = logical" in message and "wal_level is replica" in message, message
        assert one(db, "SELECT count(*) FROM webhook.subscriptions") == 0
        assert one(db, "SELECT relreplident FROM pg_class WHERE relname = 't'") == "d"
        wait_until(lambda: "WARNING:  webhook: webhook.capture = 'wal' needs wal_level = logical (it is replica)"
                   in cluster.log_text(), 10, "the capture worker's WARNING in the server log")
        db.execute("INSERT INTO t VALUES (1, 'x')")
        assert one(db, "SELECT count(*) FROM webhook.deliveries") == 0
        assert one(db, "SELECT count(*) FROM webhook.capture_lag") == 0
        assert one(db, "SELECT count(*) FROM pg_replication_slots") == 0


def test_mode_switch_trigger_wal_trigger_sends_each_change_once():
    """trigger -> WAL -> trigger, each by changing webhook.capture and restarting, while a writer
    commits one row per transaction across both restarts (reconnecting): the worker moves the
    table to the new mode at start, and every committed row (before, during, after each switch)
    is queued once and arrives under one webhook-id."""
    settings = {**SETTINGS, "wal_level": "logical", "webhook.capture": "'trigger'"}
    with own_watched_cluster(settings, "sw") as (cluster, receiver):
        switches(cluster, receiver)


def switches(cluster, receiver):
    """The body of test_mode_switch_trigger_wal_trigger_sends_each_change_once."""
    writer = Writer(cluster, "sw", pause=0.003)
    writer.start()
    phases = {}

    def advance(n, what):
        target = len(writer.confirmed) + n
        wait_until(lambda: len(writer.confirmed) >= target, 60, f"{n} commits {what}", poll=0.01)

    def has_trigger():
        return try_one(cluster, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sw'::regclass"
                                " AND tgname = 'webhook_capture'")

    def slots():
        return try_one(cluster, "SELECT count(*) FROM pg_replication_slots")

    def switch(mode):
        errors = writer.errors
        advance(50, f"before switching to {mode}")
        phases[f"before {mode}"] = len(writer.confirmed)
        with cluster.connect() as db:
            db.execute(f"ALTER SYSTEM SET webhook.capture = '{mode}'")
        cluster.restart("fast")
        wait_until(lambda: writer.errors > errors, 10, "the restart to cut the writer")
        advance(50, f"right after switching to {mode}")

    switch("wal")
    wait_until(lambda: has_trigger() == 0 and slots() == 1, 20, "the table to be captured from the WAL")
    advance(100, "in WAL mode")
    switch("trigger")
    wait_until(lambda: has_trigger() == 1 and slots() == 0, 20,
               "the trigger back and the slot read up to it and dropped")
    advance(100, "back in trigger mode")
    writer.stop.set()
    writer.join(timeout=30)
    log = cluster.log_text()
    assert "table sw is now captured from the WAL" in log and "table sw is captured by its trigger again" in log
    rows, requests = check_exactly_once(cluster, receiver, "sw", "/ok/sw")
    assert set(writer.confirmed) <= rows
    print(f"\nmode switch: {len(rows)} rows ({writer.errors} writer errors), {len(requests)} requests, "
          f"phases {phases}")
