import itertools
import time

import pytest

from harness import Cluster, Receiver

# Short schedules so retries are observable in seconds; the defaults are checked separately.
RETRY_DELAYS_MS = [200, 400, 600, 800, 1000]
SETTINGS = {
    "webhook.retry_delays": "'200ms,400ms,600ms,800ms,1s'",
    "webhook.timeout": "'2s'",
}

_counter = itertools.count()
_session_cluster = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of the session cluster's server log to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and _session_cluster:
        report.sections.append(("server log (last 60 lines)", _session_cluster[0].log_tail(60)))


@pytest.fixture(scope="session")
def cluster():
    c = Cluster(SETTINGS).start()
    _session_cluster.append(c)
    try:
        with c.connect() as conn:
            conn.execute("CREATE EXTENSION webhook")
        yield c
    finally:
        c.cleanup()


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


def wait_status(conn, delivery_id, status, timeout=15.0):
    return wait_until(
        lambda: one(conn, "SELECT status FROM webhook.deliveries WHERE id = %s", delivery_id) == status,
        timeout,
        f"delivery {delivery_id} to become {status}",
    )


def make_table(conn, table, ddl="id int PRIMARY KEY, v text"):
    conn.execute(f"CREATE TABLE {table} ({ddl})")


def endpoint(conn, name, url, **kw):
    args = ", ".join(f"{k} => %s" for k in kw)
    sql = f"SELECT webhook.create_endpoint(%s, %s{', ' + args if args else ''})"
    return one(conn, sql, name, url, *kw.values())
