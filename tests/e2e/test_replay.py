"""Replay and redeliver_failed's window end to end (SPEC §7): after a receiver outage, the
operator sends again what was created in a time window, with the original webhook-ids and
bodies, freshly signed; pending deliveries are never queued twice; census replays messages."""
import json
import threading

from conftest import endpoint, make_table, one, wait_until
from harness import verify


def statuses(db, name):
    return dict(db.execute("SELECT id, status FROM webhook.deliveries WHERE endpoint = %s",
                           (name,)).fetchall())


def wait_all(db, name, status, count, timeout=20):
    wait_until(lambda: list(statuses(db, name).values()).count(status) == count, timeout,
               f"{count} deliveries of {name} to be {status}")


def test_replay_after_a_receiver_outage(db, receiver, name):
    make_table(db, name)
    secret = endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    start = one(db, "SELECT clock_timestamp()")
    db.execute(f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b')")
    wait_all(db, name, "delivered", 2)
    middle = one(db, "SELECT clock_timestamp()")
    # The receiver goes down: the next changes are dead-lettered after their retries.
    db.execute("SELECT webhook.alter_endpoint(%s, url => %s)", (name, receiver.url(f"/status/503/{name}")))
    db.execute(f"INSERT INTO {name} VALUES (3, 'c')")
    db.execute(f"UPDATE {name} SET v = 'b2' WHERE id = 2")
    wait_all(db, name, "failed", 2)
    first = {r.headers["webhook-id"]: r.body for r in receiver.received(f"/ok/{name}")}
    down = {r.headers["webhook-id"]: r.body for r in receiver.received(f"/status/503/{name}")}
    assert len(first) == 2 and len(down) == 2

    # It is back (at a new URL here, to tell the replayed requests apart).
    db.execute("SELECT webhook.alter_endpoint(%s, url => %s)", (name, receiver.url(f"/ok/{name}/back")))
    # The window [middle, now) holds the two failed ones only; queued already, a second call
    # queues nothing (the endpoint is paused meanwhile so that nothing is delivered in between).
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    assert one(db, "SELECT webhook.replay(%s, %s)", name, middle) == 2
    assert one(db, "SELECT webhook.replay(%s, %s)", name, middle) == 0
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_all(db, name, "delivered", 4)
    back = receiver.received(f"/ok/{name}/back")
    assert {r.headers["webhook-id"]: r.body for r in back} == down  # same ids, same bytes
    assert len(back) == 2  # each sent once
    for r in back:
        assert verify(r, secret) == (True, True)

    # The whole history since the start: delivered ones go again too.
    receiver.clear()
    assert one(db, "SELECT webhook.replay(%s, %s)", name, start) == 4
    wait_all(db, name, "delivered", 4)
    again = receiver.wait_for(4, f"/ok/{name}/back")
    assert {r.headers["webhook-id"]: r.body for r in again} == {**first, **down}
    # Each replay is a fresh retry cycle; attempt numbers continue.
    assert one(db, "SELECT max(attempts) FROM webhook.deliveries WHERE endpoint = %s", name) == 6 + 2


def test_replay_never_queues_a_pending_delivery_twice(cluster, db, receiver, name):
    make_table(db, name)
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} SELECT g, 'x' FROM generate_series(1, 20) g")
    wait_all(db, name, "delivered", 20)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    # Two sessions replay the same window at once: each delivery is queued by exactly one.
    with cluster.connect(autocommit=False) as a, cluster.connect(autocommit=False) as b:
        n_a = one(a, "SELECT webhook.replay(%s, '-infinity')", name)
        b.execute("SET lock_timeout = '10s'")
        result = {}
        t = threading.Thread(target=lambda: result.update(
            b=one(b, "SELECT webhook.replay(%s, '-infinity')", name)))
        t.start()
        a.commit()
        t.join(15)
        b.commit()
    assert n_a == 20 and result["b"] == 0
    assert one(db, "SELECT webhook.replay(%s, '-infinity')", name) == 0
    receiver.clear()
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_all(db, name, "delivered", 20)
    got = receiver.wait_for(20, f"/ok/{name}")
    assert len({r.headers["webhook-id"] for r in got}) == 20 == len(got)


def test_census_replay_resends_whole_messages(db, receiver, name):
    make_table(db, name)
    secret = endpoint(db, name, receiver.url(f"/ok/{name}"), format="census", batch_size=10)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} VALUES (1, 'a')")
    middle = one(db, "SELECT clock_timestamp()")
    db.execute(f"INSERT INTO {name} VALUES (2, 'b'), (3, 'c')")
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_all(db, name, "delivered", 3)
    (sent,) = receiver.wait_for(1, f"/ok/{name}")
    assert [r["id"] for r in json.loads(sent.body)["data"]] == [1, 2, 3]
    receiver.clear()
    # The window holds changes 2 and 3; their message carries 1 too and goes whole.
    assert one(db, "SELECT webhook.replay(%s, %s)", name, middle) == 3
    wait_all(db, name, "delivered", 3)
    (again,) = receiver.wait_for(1, f"/ok/{name}")
    assert again.headers["webhook-id"] == sent.headers["webhook-id"]
    assert again.body == sent.body
    assert verify(again, secret) == (True, True)
    # redeliver_failed leaves a delivered message alone.
    assert one(db, "SELECT webhook.redeliver_failed(%s)", name) == 0
