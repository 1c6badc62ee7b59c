import itertools
import time

import pytest

from harness import Cluster, Receiver

# Short schedules so retries are observable in seconds; the defaults are checked separately.
# Each delay doubles the one before and the first four are well below the worker's 1 s idle poll,
# so a worker that retried on its poll instead of at the due time shows gaps of ~1 s and fails
# test_retry_schedule_then_failed.
RETRY_DELAYS_MS = [100, 200, 400, 800, 1600]
RETRY_DELAYS = ",".join(f"{ms}ms" for ms in RETRY_DELAYS_MS)
# How far an observed gap between attempts may stray from the scheduled delay: a gap is never
# shorter (the delay runs from the attempt's end), and later by at most a request round trip,
# the outcome's record and the claim.
RETRY_GAP_SLACK_MS = (-15, 150)
# The worker's idle poll (src/worker/mod.rs IDLE_POLL); a commit must wake it well before this.
IDLE_POLL_S = 1.0
WAKE_DEADLINE_S = 0.3
SETTINGS = {
    "webhook.retry_delays": f"'{RETRY_DELAYS}'",
    "webhook.timeout": "'2s'",
}
# WAL capture (SPEC §8): the same suite settings, changes read back from a logical slot.
WAL_SETTINGS = {**SETTINGS, "wal_level": "logical", "webhook.capture": "'wal'"}
# How long a committed change may take to reach the queue in WAL mode (it takes milliseconds;
# the deadline only bounds a failure).
SETTLE_TIMEOUT_S = 10.0

_counter = itertools.count()
_session_clusters = {}  # capture mode -> the session's cluster


def pytest_configure(config):
    config.addinivalue_line("markers", "both_modes: run the test against the trigger and the WAL cluster")
    config.addinivalue_line("markers", "wal_mode: run the test against the WAL cluster only")


def pytest_generate_tests(metafunc):
    """`cluster` (and so `db`) is the trigger-mode cluster, unless the test is marked:
    both_modes runs it once per capture mode ([trigger], [wal]), wal_mode in WAL mode only."""
    if "cluster" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_modes"):
        metafunc.parametrize("cluster", ["trigger", "wal"], indirect=True)
    elif metafunc.definition.get_closest_marker("wal_mode"):
        metafunc.parametrize("cluster", ["wal"], indirect=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of the server log of the session cluster the test used."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    used = getattr(item, "funcargs", {}).get("cluster")
    if isinstance(used, Cluster):
        report.sections.append((f"server log of the {used.capture} cluster (last 60 lines)", used.log_tail(60)))
    elif _session_clusters:
        for mode, c in _session_clusters.items():
            report.sections.append((f"server log of the {mode} cluster (last 60 lines)", c.log_tail(60)))


def _session_cluster(mode, settings):
    c = Cluster(settings).start()
    c.capture = mode
    _session_clusters[mode] = c
    try:
        with c.connect() as conn:
            conn.execute("CREATE EXTENSION webhook")
            if mode == "wal":  # the worker creates the slot within a second of CREATE EXTENSION
                wait_until(lambda: one(conn, "SELECT count(*) FROM webhook.capture_lag") == 1, 20,
                           "the WAL capture's slot")
        yield c
    finally:
        c.cleanup()


@pytest.fixture(scope="session")
def trigger_cluster():
    yield from _session_cluster("trigger", SETTINGS)


@pytest.fixture(scope="session")
def wal_cluster():
    yield from _session_cluster("wal", WAL_SETTINGS)


@pytest.fixture
def cluster(request):
    """The session's cluster in the capture mode the test runs in (see pytest_generate_tests).
    Function-scoped, as a parametrised fixture must be: a fixture of a wider scope asks for
    trigger_cluster or wal_cluster by name."""
    mode = getattr(request, "param", "trigger")
    return request.getfixturevalue(f"{mode}_cluster")


@pytest.fixture
def capture_mode(cluster):
    """'trigger' or 'wal': the mode of the cluster this test runs against."""
    return cluster.capture


@pytest.fixture(scope="session")
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def db(cluster):
    with cluster.connect() as conn:
        yield conn


@pytest.fixture
def name():
    """A fresh name for this test's endpoints, tables and paths."""
    return f"t{next(_counter)}"


def one(conn, sql, *args):
    row = conn.execute(sql, args).fetchone()
    return row[0] if row else None


def wait_until(predicate, timeout=10.0, what="condition", poll=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def settle(conn, timeout=SETTLE_TIMEOUT_S):
    """WAL mode: wait until the capture worker has queued every change committed before this
    call (in trigger mode capture is part of the commit: returns at once).

    The slot's confirmed position only moves to what is queued and committed, and it moves when
    the worker reads; so: take the WAL insert position, then wait until the slot is confirmed
    up to it, writing a tiny non-transactional WAL record now and then (which pgoutput ignores)
    so that an idle worker has something to read and moves the slot."""
    if one(conn, "SELECT current_setting('webhook.capture', true)") != "wal":
        return
    target = one(conn, "SELECT pg_current_wal_insert_lsn()")
    deadline = time.monotonic() + timeout
    while True:
        done = one(conn, "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots"
                         " WHERE slot_name = 'webhook_' || (SELECT oid FROM pg_database"
                         " WHERE datname = current_database())", target)
        if done:
            return
        if time.monotonic() > deadline:
            lag = conn.execute("SELECT * FROM webhook.capture_lag").fetchall()
            raise AssertionError(f"the capture worker did not read up to {target} within {timeout}s"
                                 f" (webhook.capture_lag: {lag})")
        conn.execute("SELECT pg_logical_emit_message(false, 'webhook-e2e-settle', '')")
        time.sleep(0.02)


def wait_status(conn, delivery_id, status, timeout=15.0):
    return wait_until(
        lambda: one(conn, "SELECT status FROM webhook.deliveries WHERE id = %s", delivery_id) == status,
        timeout,
        f"delivery {delivery_id} to become {status}",
    )


def message_id(conn, delivery_id):
    """The webhook-id a delivery is sent with (its census message's, once batched)."""
    return one(conn, "SELECT message_id FROM webhook.deliveries WHERE id = %s", delivery_id)


def in_capture_order(conn, requests):
    """Requests are sent concurrently: put them in capture order, the order of the first
    delivery id of each one's message (webhook-ids are opaque)."""
    ids = list({r.headers["webhook-id"] for r in requests})
    first = dict(conn.execute("SELECT message_id, min(id) FROM webhook.deliveries WHERE message_id = ANY(%s)"
                              " GROUP BY message_id", (ids,)).fetchall())
    return sorted(requests, key=lambda r: first[r.headers["webhook-id"]])


def make_table(conn, table, ddl="id int PRIMARY KEY, v text"):
    conn.execute(f"CREATE TABLE {table} ({ddl})")


def endpoint(conn, name, url, **kw):
    args = ", ".join(f"{k} => %s" for k in kw)
    sql = f"SELECT webhook.create_endpoint(%s, %s{', ' + args if args else ''})"
    return one(conn, sql, name, url, *kw.values())


def watched(db, receiver, name, ddl="id int PRIMARY KEY, v text", path=None, **watch):
    """A table `name` watched by an endpoint `name` (receiver path /ok/<name> unless given), with
    the watch options given; returns the endpoint's secret."""
    make_table(db, name, ddl)
    secret = endpoint(db, name, receiver.url(path or f"/ok/{name}"))
    args = "".join(f", {k} => %s" for k in watch)
    db.execute(f"SELECT webhook.watch(%s, %s{args})", (name, name, *watch.values()))
    return secret


def assert_retry_gaps(requests, delays_ms=RETRY_DELAYS_MS):
    """The gaps between consecutive attempts follow the schedule, each within RETRY_GAP_SLACK_MS;
    gaps that are all about the idle poll (1 s) fail."""
    gaps = [round((b.received - a.received) * 1000) for a, b in zip(requests, requests[1:])]
    assert len(gaps) == len(delays_ms), (gaps, delays_ms)
    low, high = RETRY_GAP_SLACK_MS
    for gap, want in zip(gaps, delays_ms):
        assert want + low <= gap <= want + high, f"gaps {gaps} ms, schedule {delays_ms} ms"
    return gaps


def wait_worker_idle(conn, timeout=30.0):
    """Wait until the worker has nothing to do for the next 1.5 s (no delivery of an enabled
    endpoint in flight or due soon) and sleeps on its latch: from here only a commit's wake-up
    gets a new delivery out before its idle poll (1 s) ends."""
    def idle():
        busy = one(conn, "SELECT count(*) FROM webhook.delivery d JOIN webhook.endpoint e ON e.id = d.endpoint_id"
                         " WHERE e.enabled AND (d.status = 'delivering' OR"
                         " (d.status = 'pending' AND d.next_attempt_at < now() + interval '1.5 s'))")
        waiting = one(conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'"
                            " AND wait_event_type = 'Extension'")
        return busy == 0 and waiting >= 1
    wait_until(idle, timeout, "the worker to be idle", poll=0.02)
