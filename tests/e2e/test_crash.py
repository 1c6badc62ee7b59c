"""Fault suite: while 20k changes commit (and some roll back), kill -9 the worker several times
and stop the cluster with -m immediate once, each fault while the writer is mid-stream (checked:
it committed just before, the fault cut its connection, and it committed again after). Every
committed change must arrive at least once,
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
        self.commits = 0  # transactions committed (rolled-back ones not counted)
        self.last_commit = None  # time.monotonic() of the latest commit
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
                if tx % 10 != 9:
                    self.commits += 1
                    self.last_commit = time.monotonic()
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
        faults = []  # per fault: (rows written before, commits before, writer errors before)

        def fault(n, act):
            """Wait until the writer is n/(KILLS + 2) of the way through, then check it is
            mid-stream (alive, not done, committed within the last 0.5 s) and act."""
            wait_until(lambda: writer.next_id > n * COMMITTED_TARGET // (KILLS + 2), 60,
                       f"the writer to reach fault {n}", poll=0.01)
            assert writer.is_alive() and writer.next_id <= COMMITTED_TARGET, "the writer finished before the fault"
            assert time.monotonic() - writer.last_commit < 0.5, "the writer is not committing"
            faults.append((writer.next_id, writer.commits, writer.errors))
            act()

        def overlapped():
            """The fault cut the writer's stream (its connection died with the crash: an error)
            and the writer commits again afterwards."""
            _, commits, errors = faults[-1]
            wait_until(lambda: writer.errors > errors and writer.commits > commits, 30,
                       f"the writer to be cut by fault {len(faults)} and commit again", poll=0.01)

        for n in range(1, KILLS + 1):
            fault(n, lambda: os.kill(pids[-1], signal.SIGKILL))
            pids.append(wait_for(lambda: (lambda p: p if p and p != pids[-1] else None)(worker_pid(cluster)),
                                 30, "worker to come back after kill -9"))
            overlapped()

        def immediate_stop():
            cluster.stop("immediate")
            cluster.start()

        fault(KILLS + 1, immediate_stop)
        pids.append(wait_for(lambda: worker_pid(cluster), 30, "worker after immediate stop"))
        overlapped()
        assert len(faults) == KILLS + 1
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
              f"{duplicates} duplicates, 0 rolled-back changes received, worker pids {pids}; "
              f"faults at rows {[f[0] for f in faults]}")
    finally:
        receiver.close()
        cluster.cleanup()
