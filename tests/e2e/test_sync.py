"""Sync runs (SPEC §6): a table's existing rows sent through a subscription, read in primary-key
chunks by the worker, with the run's status and counts in webhook.sync_runs; cancelled, failed,
resumed after the worker is killed, and refused with clear errors."""
import json
import os
import signal
import time

import psycopg
import pytest

from conftest import SETTINGS, endpoint, make_table, one, wait_until
from harness import Cluster, verify

CHUNK = 500  # src/worker/mod.rs SYNC_CHUNK_ROWS: the tests cross several chunks


def run_state(db, run):
    return db.execute("SELECT status, rows_total, rows_queued, rows_sent, rows_failed, error, started_at,"
                      " finished_at FROM webhook.sync_runs WHERE id = %s", (run,)).fetchone()


def wait_run(db, run, statuses=("success",), timeout=60):
    return wait_until(lambda: (s := run_state(db, run)) and s[0] in statuses and s,
                      timeout, f"sync run {run} to end {statuses}")


def test_a_run_sends_every_row_through_the_subscription(db, receiver, name):
    make_table(db, name, "id int PRIMARY KEY, v text, secret text")
    rows = 3 * CHUNK + 17
    db.execute(f"INSERT INTO {name} SELECT g, 'row ' || g, 's' FROM generate_series(1, %s) g", (rows,))
    secret = endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.watch(%s, %s, redact => '{secret}', rename => %s, predicate => 'id %% 3 <> 0')",
               (name, name, json.dumps({"v": "value"})))
    run = one(db, "SELECT webhook.sync(%s, %s)", name, name)
    assert run_state(db, run)[0] in ("queued", "reading", "sending", "success")
    state = wait_run(db, run)
    expected = [i for i in range(1, rows + 1) if i % 3 != 0]
    assert state[2:5] == (len(expected), len(expected), 0), state
    got = receiver.wait_for(len(expected), f"/ok/{name}", timeout=60)
    assert len(got) == len(expected)
    started = state[6]
    by_id = {}
    for r in got:
        assert verify(r, secret) == (True, True)
        body = r.json()
        meta = body["meta"]
        assert meta["operation"] == "data_insert" and meta["sync_run_id"] == run
        assert meta["id"] == r.headers["webhook-id"] and meta["id"].startswith("msg_")
        assert meta["occurred_at"].replace("Z", "+00:00") == started.isoformat()
        by_id[body["data"]["id"]] = body
    assert sorted(by_id) == expected
    assert by_id[1] == {"data": {"id": 1, "value": "row 1", "secret": "<<REDACTED>>"}, "redacted": ["secret"],
                        "meta": {**by_id[1]["meta"]}}
    assert len({r.headers["webhook-id"] for r in got}) == len(got)


def test_census_run_records_never_share_a_message_with_live_changes(db, receiver, name):
    make_table(db, name)
    db.execute(f"INSERT INTO {name} SELECT g, 'old' FROM generate_series(1, 250) g")
    endpoint(db, name, receiver.url(f"/ok/{name}"), format="census")
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute(f"INSERT INTO {name} SELECT g, 'live' FROM generate_series(1001, 1050) g")  # queued, waiting
    run = one(db, "SELECT webhook.sync(%s, %s)", name, name)
    wait_until(lambda: run_state(db, run)[0] == "sending", what="the run to finish reading")
    db.execute(f"INSERT INTO {name} SELECT g, 'live' FROM generate_series(1051, 1100) g")
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    state = wait_run(db, run)
    assert state[2:5] == (300, 300, 0), state  # the 250 old rows and the 50 live ones committed before
    got = receiver.wait_for(1, f"/ok/{name}")
    wait_until(lambda: sum(len(r.json()["data"]) for r in receiver.received(f"/ok/{name}")) == 400,
               what="300 run records and 100 live changes")
    started = state[6].isoformat()
    for r in receiver.received(f"/ok/{name}"):
        body = r.json()
        kinds = {"run" if body["sync_run_at"].replace("Z", "+00:00") == started else "live"}
        assert len(body["data"]) <= 100
        # A message is all run records or all live changes.
        assert len(kinds) == 1
    mixed = one(db, "SELECT count(*) FROM (SELECT batch_id FROM webhook.delivery WHERE batch_id IS NOT NULL"
                    " GROUP BY batch_id HAVING count(DISTINCT coalesce(sync_run_id, 0)) > 1) m")
    assert mixed == 0
    assert got


def test_a_run_whose_records_are_dead_lettered_fails(db, receiver, name):
    make_table(db, name)
    db.execute(f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b')")
    endpoint(db, name, receiver.url(f"/status/500/{name}"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    run = one(db, "SELECT webhook.sync(%s, %s)", name, name)
    state = wait_run(db, run, ("failed",), timeout=30)  # 6 attempts on the test schedule: ~3 s
    assert state[2:5] == (2, 0, 2) and state[5] is None, state


def test_cancel_stops_reading_and_what_was_queued_is_still_sent(db, receiver, name):
    make_table(db, name)
    db.execute(f"INSERT INTO {name} SELECT g, 'x' FROM generate_series(1, 200000) g")
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    run = one(db, "SELECT webhook.sync(%s, %s)", name, name)
    wait_until(lambda: run_state(db, run)[2] >= CHUNK, what="a first chunk")
    db.execute("SELECT webhook.cancel_sync(%s)", (run,))
    queued = run_state(db, run)[2]
    assert run_state(db, run)[0] == "cancelled" and 0 < queued < 200000
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="already finished"):
        db.execute("SELECT webhook.cancel_sync(%s)", (run,))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    receiver.wait_for(queued, f"/ok/{name}", timeout=120)
    assert run_state(db, run)[2] == queued  # nothing more was read
    db.execute(f"DROP TABLE {name}")


def test_errors(db, receiver, name):
    make_table(db, name)
    make_table(db, f"{name}_nokey", "a int, b text")
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    cases = [
        (f"SELECT webhook.sync('{name}', 'nope')", psycopg.errors.UndefinedObject, 'endpoint "nope"'),
        (f"SELECT webhook.sync('{name}', '{name}')", psycopg.errors.UndefinedObject, "is not watched"),
        (f"SELECT webhook.sync('{name}_nokey', '{name}')", psycopg.errors.InvalidColumnReference, "no primary key"),
        (f"SELECT webhook.sync(NULL, '{name}')", psycopg.errors.NullValueNotAllowed, '"tbl"'),
        (f"SELECT webhook.sync('{name}', NULL)", psycopg.errors.NullValueNotAllowed, '"endpoint"'),
        ("SELECT webhook.cancel_sync(987654321)", psycopg.errors.UndefinedObject, "sync run 987654321"),
        ("SELECT webhook.cancel_sync(NULL)", psycopg.errors.NullValueNotAllowed, '"run"'),
    ]
    for sql, error, message in cases:
        with pytest.raises(error, match=message):
            db.execute(sql)
    db.execute(f"INSERT INTO {name} SELECT g, 'x' FROM generate_series(1, 100000) g")
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    run = one(db, "SELECT webhook.sync(%s, %s)", name, name)
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match=f"sync run {run} .* is still reading"):
        db.execute("SELECT webhook.sync(%s, %s)", (name, name))
    # Unwatching during a run fails it, with the reason.
    db.execute("SELECT webhook.unwatch(%s, %s)", (name, name))
    state = wait_until(lambda: (s := run_state(db, run)) and s[0] == "failed" and s, what="the run to fail")
    assert "unwatch" in state[5]
    assert one(db, "SELECT count(*) FROM webhook.sync_runs WHERE id = %s", run) == 1
    db.execute(f"DROP TABLE {name}, {name}_nokey")


def test_a_run_resumes_after_kill_9_and_an_immediate_shutdown(receiver, name):
    """kill -9 of the worker mid-run, then an immediate shutdown of the cluster mid-run (a
    cluster of its own): the run resumes after its last committed chunk each time and queues
    every row exactly once."""
    rows = 200 * CHUNK
    cluster = Cluster(SETTINGS).start()

    def state():
        try:
            with cluster.connect() as db:
                return run_state(db, run)
        except psycopg.OperationalError:  # the postmaster is restarting every backend
            return None
    try:
        with cluster.connect() as db:
            db.execute("CREATE EXTENSION webhook")
            make_table(db, name)
            db.execute(f"INSERT INTO {name} SELECT g, 'x' FROM generate_series(1, %s) g", (rows,))
            endpoint(db, name, receiver.url(f"/ok/{name}"))
            db.execute("SELECT webhook.watch(%s, %s)", (name, name))
            db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
            run = one(db, "SELECT webhook.sync(%s, %s)", name, name)
            wait_until(lambda: run_state(db, run)[2] >= 2 * CHUNK, what="reading under way")
            pid = one(db, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'")
            killed_at = run_state(db, run)[2]
            os.kill(pid, signal.SIGKILL)
        resumed = wait_until(lambda: (s := state()) and s[2] >= killed_at + 2 * CHUNK and s, timeout=60,
                             what="reading to resume after kill -9")
        cluster.stop("immediate")
        cluster.start()
        final = wait_until(lambda: (s := state()) and s[0] == "sending" and s, timeout=120,
                           what="the run to finish reading after the immediate shutdown")
        assert killed_at < rows and resumed[2] < rows, "a fault came after reading ended: the test proved nothing"
        assert final[2] == rows
        with cluster.connect() as db:
            # Each row was queued once: a chunk cut by a fault was rolled back whole.
            assert one(db, "SELECT count(*) FROM webhook.delivery WHERE sync_run_id = %s", run) == rows
            assert one(db, "SELECT count(DISTINCT payload::jsonb #> '{data,id}') FROM webhook.delivery"
                           " WHERE sync_run_id = %s", run) == rows
    finally:
        cluster.cleanup()


def test_sync_events_arrive_in_order_each_after_the_previous(db, receiver, name):
    """sync.triggered, started, completed, success: one run's events to every endpoint subscribed
    to them, each sent only once the previous one was delivered, with exactly SPEC §6's keys."""
    make_table(db, name)
    db.execute(f"INSERT INTO {name} SELECT g, 'x' FROM generate_series(1, 20) g")
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    secrets = {}
    for watcher in ("a", "b"):
        # One observer answers slowly: the next event must still wait for it.
        path = f"/sleep/0.3/{name}/{watcher}" if watcher == "a" else f"/ok/{name}/{watcher}"
        secrets[watcher] = endpoint(db, f"{name}_{watcher}", receiver.url(path))
        db.execute("SELECT webhook.subscribe_events(%s, %s)",
                   (f"{name}_{watcher}", ["sync.triggered", "sync.started", "sync.completed", "sync.success",
                                          "sync.failed"]))
    run = one(db, "SELECT webhook.sync(%s, %s)", name, name)
    wait_run(db, run)
    keys = {"run_id", "endpoint", "table"}
    expected = [("sync.triggered", keys), ("sync.started", keys | {"rows_total"}),
                ("sync.completed", keys | {"rows_total", "status", "rows_sent", "rows_failed", "duration_ms"}),
                ("sync.success", keys | {"rows_total", "status", "rows_sent", "rows_failed", "duration_ms"})]
    for watcher, path in (("a", f"/sleep/0.3/{name}/a"), ("b", f"/ok/{name}/b")):
        got = receiver.wait_for(4, path, timeout=30)
        assert [r.json()["type"] for r in got] == [t for t, _ in expected]
        for r, (_, k) in zip(got, expected):
            assert verify(r, secrets[watcher]) == (True, True)
            body = r.json()
            assert set(body) == {"type", "timestamp", "data"} and set(body["data"]) == k, body
            assert body["data"]["run_id"] == run and body["data"]["table"] == f"public.{name}"
        assert got[2].json()["data"]["status"] == "success" and got[2].json()["data"]["rows_sent"] == 20
    # Event n+1 was queued only after event n was delivered to both: the slow observer answers
    # 0.3 s after it receives (the receiver records a request on arrival).
    slow = receiver.received(f"/sleep/0.3/{name}/a")
    fast = receiver.received(f"/ok/{name}/b")
    for n in range(3):
        assert fast[n + 1].received >= slow[n].received + 0.3, "an event left before the previous one was delivered"
    # A run cancelled before it read anything: triggered, then completed (cancelled), nothing else.
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (f"{name}_a",))
    db.execute("SELECT webhook.subscribe_events(%s, '{}')", (f"{name}_a",))
    with db.transaction():
        run2 = one(db, "SELECT webhook.sync(%s, %s)", name, name)
        db.execute("SELECT webhook.cancel_sync(%s)", (run2,))
    got = receiver.wait_for(6, f"/ok/{name}/b", timeout=30)[4:]
    assert [(r.json()["type"], r.json()["data"].get("status")) for r in got] == [
        ("sync.triggered", None), ("sync.completed", "cancelled")]
