"""Messages end to end: census batches (SPEC §2) and message ids (SPEC §3).

A census endpoint sends up to batch_size consecutive changes of one subscription with the same
envelope operation in one request, with one webhook-id kept on every retry; redelivering any of
its changes resends the whole message byte for byte; a batch never waits to fill. Message ids
are unique across re-installs of the extension and across servers sending to one receiver."""
import datetime
import json
import time

import pytest

from conftest import SETTINGS, WAKE_DEADLINE_S, endpoint, make_table, one, settle, wait_until, wait_worker_idle
from harness import Cluster, verify

ID_CHARS = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def is_message_id(value):
    return value.startswith("msg_") and len(value) == 26 and set(value[4:]) <= ID_CHARS


def census(db, receiver, name, path=None, **options):
    secret = endpoint(db, name, receiver.url(path or f"/ok/{name}"), format="census", **options)
    return secret


def changes(db, name):
    """(id, message_id, status, attempts) of each change queued for the endpoint, in capture order."""
    settle(db)
    return db.execute("SELECT id, message_id, status, attempts FROM webhook.deliveries WHERE endpoint = %s"
                      " ORDER BY id", (name,)).fetchall()


def occurred(db, delivery_id):
    """A change's own occurred_at, as capture queued it (the single-record envelope's sync_run_at)."""
    return one(db, "SELECT payload->>'sync_run_at' FROM webhook.deliveries WHERE id = %s", delivery_id)


def wait_delivered(db, name, count, timeout=15):
    wait_until(lambda: one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s"
                               " AND status = 'delivered'", name) == count,
               timeout, f"{count} changes of {name} to be delivered")


@pytest.mark.both_modes
def test_census_batches_consecutive_changes_of_one_subscription(db, receiver, name):
    """Changes queued while the endpoint was disabled go out as few messages as the rules allow:
    per subscription, consecutive changes with the same operation, at most batch_size each,
    in capture order; another subscription's changes never share a message."""
    make_table(db, name, "id int PRIMARY KEY, company text, email text")
    make_table(db, f"{name}_b", "id int PRIMARY KEY, v text")
    secret = census(db, receiver, name, batch_size=3)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    sub = one(db, "SELECT webhook.watch(%s, %s, name => 'active users', columns => '{id,company}')", name, name)
    sub_b = one(db, "SELECT webhook.watch(%s, %s)", f"{name}_b", name)
    with db.transaction():  # two tables' changes interleaved in one transaction
        for i in range(1, 6):
            db.execute(f"INSERT INTO {name} VALUES (%s, %s, %s)", (i, f"Co {i}", f"{i}@x.y"))
            if i <= 2:
                db.execute(f"INSERT INTO {name}_b VALUES (%s, 'b')", (i,))
    db.execute(f"DELETE FROM {name} WHERE id = 1")
    db.execute(f"INSERT INTO {name} VALUES (6, 'Co 6', '6@x.y'), (7, 'Co 7', '7@x.y')")
    queued = changes(db, name)
    assert len(queued) == 10 and all(m is None and s == "pending" for _, m, s, _ in queued)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_delivered(db, name, 10)
    got = receiver.received(f"/ok/{name}")
    assert len(got) == 5
    by_message = {r.headers["webhook-id"]: r for r in got}
    assert len(by_message) == 5 and all(is_message_id(i) for i in by_message)
    rows = changes(db, name)
    # Every change shows the message it went in, delivered at its first attempt.
    assert all(s == "delivered" and a == 1 and m in by_message for _, m, s, a in rows)
    ids = [r[0] for r in rows]
    a_ids = [i for i in ids if one(db, "SELECT table_name FROM webhook.deliveries WHERE id = %s", i) == f"public.{name}"]
    b_ids = [i for i in ids if i not in a_ids]
    message_of = {r[0]: r[1] for r in rows}
    groups = {}
    for i in ids:
        groups.setdefault(message_of[i], []).append(i)
    ins, dele, ins2 = a_ids[:5], a_ids[5:6], a_ids[6:]
    assert sorted(groups.values()) == sorted([ins[:3], ins[3:5], dele, ins2, b_ids])
    envelope = {"api_version": 1, "connection_name": name, "schema_name": "public",
                "sync_configuration_name": None}
    a_envelope = dict(envelope, model_name="active users", table_name=name, sync_configuration_id=sub)
    b_envelope = dict(envelope, model_name=f"public.{name}_b", table_name=f"{name}_b", sync_configuration_id=sub_b)
    expected = {
        message_of[ins[0]]: dict(a_envelope, operation="changed", sync_run_at=occurred(db, ins[0]),
                                 data=[{"id": 1, "company": "Co 1"}, {"id": 2, "company": "Co 2"},
                                       {"id": 3, "company": "Co 3"}]),
        message_of[ins[3]]: dict(a_envelope, operation="changed", sync_run_at=occurred(db, ins[3]),
                                 data=[{"id": 4, "company": "Co 4"}, {"id": 5, "company": "Co 5"}]),
        message_of[dele[0]]: dict(a_envelope, operation="deleted", sync_run_at=occurred(db, dele[0]),
                                  data=[{"id": 1}]),
        message_of[ins2[0]]: dict(a_envelope, operation="changed", sync_run_at=occurred(db, ins2[0]),
                                  data=[{"id": 6, "company": "Co 6"}, {"id": 7, "company": "Co 7"}]),
        message_of[b_ids[0]]: dict(b_envelope, operation="changed", sync_run_at=occurred(db, b_ids[0]),
                                   data=[{"id": 1, "v": "b"}, {"id": 2, "v": "b"}]),
    }
    for message, req in by_message.items():
        assert json.loads(req.body) == expected[message], message
        assert verify(req, secret) == (True, True)
    # Key order is the envelope's, records in capture order, data last.
    first = by_message[message_of[ins[0]]].body.decode()
    assert first.startswith('{"api_version":1,"operation":"changed","sync_run_at":')
    assert first.endswith('"data":[{"id":1,"company":"Co 1"},{"id":2,"company":"Co 2"},{"id":3,"company":"Co 3"}]}')
    # sync_run_at is the first record's occurred_at (the capturing transaction's start, or in WAL
    # mode its commit).
    at = datetime.datetime.fromisoformat(expected[message_of[ins[0]]]["sync_run_at"].replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - at).total_seconds()) < 60
    assert one(db, "SELECT pending + failed FROM webhook.endpoint_stats WHERE endpoint = %s", name) == 0
    assert one(db, "SELECT delivered FROM webhook.endpoint_stats WHERE endpoint = %s", name) == 10


@pytest.mark.both_modes
def test_census_default_batch_is_100_records(db, receiver, name):
    make_table(db, name)
    census(db, receiver, name)
    assert one(db, "SELECT batch_size FROM webhook.endpoints WHERE name = %s", name) == 100
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} SELECT g, 'v' FROM generate_series(1, 250) g")
    settle(db)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_delivered(db, name, 250)
    sizes = sorted(len(r.json()["data"]) for r in receiver.received(f"/ok/{name}"))
    assert sizes == [50, 100, 100]
    records = sorted(rec["id"] for r in receiver.received(f"/ok/{name}") for rec in r.json()["data"])
    assert records == list(range(1, 251))  # each change exactly once


@pytest.mark.both_modes
def test_census_retries_keep_the_message_and_redeliver_resends_it_whole(db, receiver, name):
    path = f"/flaky/2/{name}"
    make_table(db, name)
    secret = census(db, receiver, name, path=path, batch_size=10)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, 4) g")
    settle(db)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_delivered(db, name, 4)
    got = receiver.received(path)
    assert [r.headers["webhook-id"] for r in got] == [got[0].headers["webhook-id"]] * 3  # 500, 500, 200
    assert [r.body for r in got] == [got[0].body] * 3
    assert len(got[0].json()["data"]) == 4
    for req in got:
        assert verify(req, secret) == (True, True)
    rows = changes(db, name)
    assert {(m, s, a) for _, m, s, a in rows} == {(got[0].headers["webhook-id"], "delivered", 3)}
    # The message's attempts are each change's attempts.
    for did, *_ in rows:
        assert db.execute("SELECT attempt, status_code FROM webhook.attempts WHERE delivery_id = %s"
                          " ORDER BY attempt", (did,)).fetchall() == [(1, 500), (2, 500), (3, 200)]
    # Redelivering one change resends its whole message, byte for byte, with the same id.
    db.execute("SELECT webhook.redeliver(%s)", (rows[2][0],))
    again = receiver.wait_for(4, path)[3]
    assert again.body == got[0].body
    assert again.headers["webhook-id"] == got[0].headers["webhook-id"]
    assert verify(again, secret) == (True, True)
    wait_until(lambda: {(s, a) for _, _, s, a in changes(db, name)} == {("delivered", 4)},
               what="every change of the message to show the fourth attempt")
    time.sleep(0.3)
    assert len(receiver.received(path)) == 4  # one request, not one per change


@pytest.mark.both_modes
def test_census_batch_never_waits_to_fill(db, receiver, name):
    """With the worker idle, a single change is sent at once, alone in its message."""
    make_table(db, name)
    census(db, receiver, name)
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    for attempt in range(3):
        wait_worker_idle(db)
        started = time.monotonic()
        db.execute(f"INSERT INTO {name} VALUES (%s, 'alone')", (attempt,))
        req = receiver.wait_for(attempt + 1, f"/ok/{name}")[-1]
        assert req.received - started < WAKE_DEADLINE_S, "the change waited"
        assert req.json()["data"] == [{"id": attempt, "v": "alone"}]


def test_message_ids_never_repeat_across_reinstalls_and_servers(receiver, name):
    """Delivery ids restart at 1 after DROP/CREATE EXTENSION and on every server; webhook-ids
    must not: a receiver deduplicating on webhook-id would drop new messages."""
    rows = 20
    sent_ids = []
    delivery_ids = []

    def send_all(cluster, tag):
        with cluster.connect() as db:
            db.execute("CREATE EXTENSION webhook")
            make_table(db, f"{name}_{tag}")
            endpoint(db, f"{tag}_rownd", receiver.url(f"/ok/{name}/{tag}/rownd"))
            endpoint(db, f"{tag}_census", receiver.url(f"/ok/{name}/{tag}/census"), format="census",
                     batch_size=1)
            for ep in ("rownd", "census"):
                db.execute("SELECT webhook.watch(%s, %s)", (f"{name}_{tag}", f"{tag}_{ep}"))
            db.execute(f"INSERT INTO {name}_{tag} SELECT g, 'v' FROM generate_series(1, {rows}) g")
            for ep in ("rownd", "census"):
                got = receiver.wait_for(rows, f"/ok/{name}/{tag}/{ep}", timeout=20)
                sent_ids.extend(r.headers["webhook-id"] for r in got)
            delivery_ids.extend(r[0] for r in db.execute("SELECT id FROM webhook.deliveries"))
            meta_ids = {r.json()["meta"]["id"] for r in receiver.received(f"/ok/{name}/{tag}/rownd")}
            assert meta_ids == {r.headers["webhook-id"] for r in receiver.received(f"/ok/{name}/{tag}/rownd")}
            db.execute("DROP EXTENSION webhook CASCADE")
            db.execute(f"DROP TABLE {name}_{tag}")

    with Cluster(SETTINGS).start() as first, Cluster(SETTINGS).start() as second:
        send_all(first, "a")
        send_all(first, "reinstalled")  # same server, same database, extension created again
        send_all(second, "b")           # another server
    assert len(sent_ids) == 3 * 2 * rows
    assert all(is_message_id(i) for i in sent_ids)
    assert len(set(sent_ids)) == len(sent_ids), "a webhook-id was sent twice"
    # The delivery ids did repeat: each install numbered its deliveries from 1.
    assert len(set(delivery_ids)) < len(delivery_ids)
