"""Fault suite: while 20k changes commit (and some roll back), kill -9 the worker several times
and stop the cluster with -m immediate once. Every committed change must arrive at least once,
no rolled-back change ever, duplicates only from what was in flight, and the worker comes back
by itself. Bounded: about a minute."""
import os
import signal
import threading
import time

import psycopg

from conftest import wait_until
from harness import Cluster, Receiver

ROWS_PER_TX = 5
COMMITTED_TARGET = 20_000
ROLLED_BACK_BASE = 10_000_000
KILLS = 3
MAX_CONCURRENCY = 16


class Writer(threading.Thread):
    """Commits COMMITTED_TARGET rows in small transactions, every 10th transaction rolled back;
    reconnects through crashes. Ids are never reused, so an uncertain commit is simply skipped."""

    def __init__(self, cluster):
        super().__init__(daemon=True)
        self.cluster = cluster
        self.next_id = 1
        self.next_rb = ROLLED_BACK_BASE
        self.attempted = 0
        self.errors = 0
        self.stop_at = time.monotonic() + 120

    def run(self):
        conn = None
        tx = 0
        while self.next_id <= COMMITTED_TARGET and time.monotonic() < self.stop_at:
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.cluster.dsn(), connect_timeout=2)
                with conn.transaction(force_rollback=(tx % 10 == 9)):
                    if tx % 10 == 9:
                        ids = range(self.next_rb, self.next_rb + ROWS_PER_TX)
                        self.next_rb += ROWS_PER_TX
                    else:
                        ids = range(self.next_id, self.next_id + ROWS_PER_TX)
                        self.next_id += ROWS_PER_TX
                    conn.execute("INSERT INTO crash SELECT g, 'v' FROM unnest(%s::int[]) g", (list(ids),))
                tx += 1
                time.sleep(0.001)
            except psycopg.Error:
                self.errors += 1
                conn = None
                time.sleep(0.2)


def worker_pid(cluster):
    try:
        with psycopg.connect(cluster.dsn(), connect_timeout=2) as c:
            row = c.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'").fetchone()
            return row[0] if row else None
    except psycopg.Error:
        return None


def wait_for(predicate, timeout, what):
    return wait_until(predicate, timeout, what, poll=0.5)


def test_nothing_committed_is_lost_across_crashes():
    cluster = Cluster({
        "webhook.retry_delays": "'200ms,400ms,600ms,800ms,1s'",
        "webhook.timeout": "'2s'",
        "webhook.max_concurrency": str(MAX_CONCURRENCY),
        "restart_after_crash": "on",
    }).start()
    receiver = Receiver()
    try:
        with cluster.connect() as db:
            db.execute("CREATE EXTENSION webhook")
            db.execute("CREATE TABLE crash (id int PRIMARY KEY, v text)")
            db.execute("SELECT webhook.create_endpoint('crash', %s)", (receiver.url("/ok/crash"),))
            db.execute("SELECT webhook.watch('crash', 'crash')")
        writer = Writer(cluster)
        writer.start()
        pids = [wait_for(lambda: worker_pid(cluster), 10, "worker start")]
        for _ in range(KILLS):
            time.sleep(1.0)
            os.kill(pids[-1], signal.SIGKILL)
            pids.append(wait_for(lambda: (lambda p: p if p and p != pids[-1] else None)(worker_pid(cluster)),
                                 30, "worker to come back after kill -9"))
        time.sleep(1.0)
        cluster.stop("immediate")
        time.sleep(0.5)
        cluster.start()
        pids.append(wait_for(lambda: worker_pid(cluster), 30, "worker after immediate stop"))
        writer.join(timeout=150)
        assert not writer.is_alive(), "writer did not finish"

        with cluster.connect() as db:
            committed = {r[0] for r in db.execute("SELECT id FROM crash").fetchall()}
        assert len(committed) >= COMMITTED_TARGET - KILLS * 2 * ROWS_PER_TX  # only uncertain commits may be missing

        ids, seen = {}, [0]

        def received_ids():
            """Row id -> webhook-ids received; parses only what arrived since the last call."""
            requests = receiver.received("/ok/crash")
            for r in requests[seen[0]:]:
                ids.setdefault(r.json()["data"]["id"], set()).add(r.headers["webhook-id"])
            seen[0] = len(requests)
            return ids

        # Leases of deliveries in flight at a crash expire after timeout + 10 s.
        try:
            wait_for(lambda: committed <= set(received_ids()), 90, "every committed change to arrive")
        except AssertionError:
            with cluster.connect() as db:
                print(db.execute("SELECT status, count(*), min(next_attempt_at), max(attempts) FROM webhook.delivery GROUP BY 1").fetchall())
                print(db.execute("SELECT error, count(*) FROM webhook.attempt GROUP BY 1").fetchall())
            print("missing", len(committed - set(received_ids())), "received", len(receiver.received("/ok/crash")))
            open("/tmp/crash.log", "w").write(cluster.log_tail(100000))
            raise
        requests = receiver.received("/ok/crash")
        by_id = received_ids()
        rolled_back = [i for i in by_id if i >= ROLLED_BACK_BASE]
        assert rolled_back == []
        assert set(by_id) == committed  # nothing that did not commit
        assert all(len(ids) == 1 for ids in by_id.values())  # one webhook-id per change
        duplicates = len(requests) - len(by_id)
        assert duplicates <= MAX_CONCURRENCY * (KILLS + 1), duplicates
        assert len(set(pids)) == len(pids) == KILLS + 2
        print(f"\nfault suite: {len(committed)} committed changes ({writer.errors} writer errors across "
              f"{KILLS} kill -9 and 1 immediate stop), {len(requests)} requests received, "
              f"{duplicates} duplicates, 0 rolled-back changes received, worker pids {pids}")
    finally:
        receiver.close()
        cluster.cleanup()
