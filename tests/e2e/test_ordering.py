"""Ordering per key end to end (SPEC §7): on an endpoint with ordering => 'key', deliveries of one
subscription and key reach the receiver one at a time in commit order, even when attempts fail
and are retried, when writers run concurrently, across census batches and across a kill -9 of
the worker; a key whose head keeps failing holds back only itself."""
import os
import signal
import threading

from conftest import SETTINGS, endpoint, make_table, one, wait_until
from harness import Cluster, Receiver, verify

DDL = "id int PRIMARY KEY, v int"


def ordered(db, receiver, name, path, **options):
    make_table(db, name, DDL)
    secret = endpoint(db, name, receiver.url(path), **options)
    db.execute("SELECT webhook.alter_endpoint(%s, ordering => 'key')", (name,))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    return secret


def records(request):
    data = request.json()["data"]
    return data if isinstance(data, list) else [data]


def per_key(requests):
    """Per key, the values received in arrival order, a retry's repeat collapsed: a later value
    arriving before an earlier one's last attempt shows as going back."""
    seen = {}
    for r in requests:
        for rec in records(r):
            values = seen.setdefault(rec["id"], [])
            if not values or values[-1] != rec["v"]:
                values.append(rec["v"])
    return seen


def delivered(db, name):
    return one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s AND status = 'delivered'", name)


def wait_delivered(db, name, count, timeout=30):
    wait_until(lambda: delivered(db, name) == count, timeout, f"{count} deliveries of {name}")


def lock_waiter(db, pid):
    return one(db, "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s", pid)


def test_concurrent_writers_arrive_in_commit_order_per_key(cluster, db, receiver, name):
    # The first four requests fail: unordered, their retries would arrive after later changes.
    secret = ordered(db, receiver, name, f"/flaky/4/{name}")
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))  # queue, then burst
    db.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 6) g")
    expected = {k: [0] for k in range(1, 7)}
    with cluster.connect(autocommit=False) as a, cluster.connect(autocommit=False) as b, \
            cluster.connect(autocommit=False) as c, cluster.connect(autocommit=False) as d:
        # A and B change their own keys; B commits first.
        a.execute(f"UPDATE {name} SET v = 1 WHERE id = 1")
        b.execute(f"UPDATE {name} SET v = 1 WHERE id = 2")
        b.commit()
        a.commit()
        expected[1].append(1)
        expected[2].append(1)
        # C and D change one key; D waits for C's row lock until C commits.
        c.execute(f"UPDATE {name} SET v = v + 1 WHERE id = 3")
        d_pid = one(d, "SELECT pg_backend_pid()")
        d.commit()
        t = threading.Thread(target=lambda: d.execute(f"UPDATE {name} SET v = v + 1 WHERE id = 3"))
        t.start()
        wait_until(lambda: lock_waiter(db, d_pid), 10, "D to wait for C's row lock")
        c.commit()
        t.join(10)
        assert not t.is_alive()
        d.commit()
        expected[3] += [1, 2]
    # Then every key from its own thread, ten changes each, all at once.
    def writer(key):
        with cluster.connect() as w:
            for v in range(1, 11):
                w.execute(f"UPDATE {name} SET v = %s WHERE id = %s", (v + 100, key))
    threads = [threading.Thread(target=writer, args=(k,)) for k in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for k in range(1, 7):
        expected[k] += [v + 100 for v in range(1, 11)]
    total = sum(len(v) for v in expected.values())
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_delivered(db, name, total)
    got = receiver.received(f"/flaky/4/{name}")
    assert len(got) == total + 4  # each once, and the four failed attempts again
    assert per_key(got) == expected
    for r in got[:3]:
        assert verify(r, secret) == (True, True)


def test_an_update_of_the_key_waits_for_both_keys(db, receiver, name):
    path = f"/flaky/2/{name}"  # the two heads fail once each
    ordered(db, receiver, name, path)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute(f"INSERT INTO {name} VALUES (1, 0)")
    db.execute(f"INSERT INTO {name} VALUES (2, 0)")
    db.execute(f"DELETE FROM {name} WHERE id = 2")
    db.execute(f"UPDATE {name} SET id = 2, v = 1 WHERE id = 1")  # key 1 -> 2
    db.execute(f"UPDATE {name} SET v = 2 WHERE id = 2")
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_delivered(db, name, 5)
    got = [(r.json()["meta"]["operation"], r.json()["data"]["id"], r.json()["data"].get("v"))
           for r in receiver.received(path)]
    moved = got.index(("data_update", 2, 1))
    # Everything before it of key 1 (the insert) and of key 2 (insert, delete) arrived, retries
    # included, before it; the next change of key 2 after it.
    assert set(got[:moved]) == {("data_insert", 1, 0), ("data_insert", 2, 0), ("delete", 2, None)}
    assert got[moved + 1:] == [("data_update", 2, 2)]


def test_a_failing_key_holds_back_only_itself(db, receiver, name):
    ordered(db, receiver, name, f"/failkey/1/{name}")
    db.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 4) g")
    db.execute(f"UPDATE {name} SET v = 1")
    db.execute(f"UPDATE {name} SET v = 2")
    head = one(db, f"SELECT min(id) FROM webhook.deliveries WHERE endpoint = %s", name)
    # Keys 2-4 flow while key 1's head is being retried (its retries take 3.1 s in all).
    wait_delivered(db, name, 9, timeout=10)
    assert one(db, "SELECT status FROM webhook.deliveries WHERE id = %s", head) == "pending"
    failing = receiver.received(f"/failkey/1/{name}")
    assert {r.json()["data"]["v"] for r in failing if r.json()["data"]["id"] == 1} == {0}
    assert one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s AND attempts = 0", name) == 2
    assert per_key([r for r in failing if r.json()["data"]["id"] != 1]) == {k: [0, 1, 2] for k in (2, 3, 4)}
    # The receiver recovers: the head goes at its next retry, then the rest of key 1 in order.
    db.execute("SELECT webhook.alter_endpoint(%s, url => %s)", (name, receiver.url(f"/ok/{name}")))
    wait_delivered(db, name, 12, timeout=10)
    assert per_key(receiver.received(f"/ok/{name}")) == {1: [0, 1, 2]}


def test_a_dead_lettered_head_releases_its_key(db, receiver, name):
    ordered(db, receiver, name, f"/failkey/1/{name}")
    db.execute(f"INSERT INTO {name} VALUES (1, 0)")
    db.execute(f"UPDATE {name} SET v = 1")
    head, second = [r[0] for r in db.execute(
        "SELECT id FROM webhook.deliveries WHERE endpoint = %s ORDER BY id", (name,)).fetchall()]
    wait_until(lambda: one(db, "SELECT status FROM webhook.deliveries WHERE id = %s", head) == "failed",
               10, "the head to be dead-lettered")
    db.execute("SELECT webhook.alter_endpoint(%s, url => %s)", (name, receiver.url(f"/ok/{name}")))
    wait_until(lambda: one(db, "SELECT status FROM webhook.deliveries WHERE id = %s", second) == "delivered",
               10, "the next one of the key to be delivered")
    # Six attempts of the head, and only then (before the URL changed) any of the next one.
    failed = [r.json()["data"]["v"] for r in receiver.received(f"/failkey/1/{name}")]
    assert failed[:6] == [0] * 6 and set(failed[6:]) <= {1}


def test_census_batches_keep_per_key_order(db, receiver, name):
    ordered(db, receiver, name, f"/flaky/2/{name}", format="census", batch_size=10)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute(f"INSERT INTO {name} SELECT g, 0 FROM generate_series(1, 5) g")
    for v in range(1, 4):
        db.execute(f"UPDATE {name} SET v = %s", (v,))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_delivered(db, name, 20)
    got = receiver.received(f"/flaky/2/{name}")
    assert per_key(got) == {k: [0, 1, 2, 3] for k in range(1, 6)}
    # Batches still carry several keys each.
    assert max(len(records(r)) for r in got) > 1


def worker_pid(db):
    return one(db, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'")


def test_ordering_survives_a_worker_crash():
    cluster = Cluster({**SETTINGS, "restart_after_crash": "on"}).start()
    receiver = Receiver()
    try:
        with cluster.connect() as db:
            db.execute("CREATE EXTENSION webhook")
            ordered(db, receiver, "crash", "/sleep/1.5/crash")
            db.execute("SELECT webhook.alter_endpoint('crash', enabled => false)")
            db.execute("INSERT INTO crash VALUES (1, 0), (2, 0)")
            for v in range(1, 5):
                db.execute("UPDATE crash SET v = %s", (v,))
            pid = worker_pid(db)
            db.execute("SELECT webhook.alter_endpoint('crash', enabled => true)")
        # Both heads are in flight (the receiver holds them 1.5 s): kill -9 the worker.
        in_flight = receiver.wait_for(2, "/sleep/1.5/crash")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: cluster_worker_back(cluster, pid), 30, "the worker to come back")
        with cluster.connect() as db:
            db.execute("SELECT webhook.alter_endpoint('crash', url => %s)", (receiver.url("/ok/crash"),))
            # The heads' leases expire (timeout 2 s + 10 s), then each key goes on in order.
            wait_delivered(db, "crash", 10, timeout=60)
        after = receiver.received("/ok/crash")
        assert per_key(after) == {1: [0, 1, 2, 3, 4], 2: [0, 1, 2, 3, 4]}
        heads = {r.headers["webhook-id"] for r in in_flight}
        assert {r.headers["webhook-id"] for r in after[:2]} == heads  # the same heads first
        assert [r.json()["data"]["v"] for r in receiver.received("/sleep/1.5/crash")] == [0, 0]
    finally:
        receiver.close()
        cluster.cleanup()


def cluster_worker_back(cluster, old_pid):
    try:
        with cluster.connect() as db:
            pid = worker_pid(db)
            return pid is not None and pid != old_pid
    except Exception:
        return False
