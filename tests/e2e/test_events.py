"""Lifecycle and alert events (SPEC §6): endpoint.alert.raised/resolved, endpoint.disabled,
delivery.failed; each a signed delivery, never about itself, never raising more events."""
import json
import re

import pytest

from conftest import endpoint, make_table, one, wait_until, wait_worker_idle
from harness import verify

KEYS = {
    "endpoint.alert.raised": {"endpoint", "consecutive_failures", "last_status_code", "last_error"},
    "endpoint.alert.resolved": {"endpoint", "down_for_ms"},
    "endpoint.disabled": {"endpoint", "failing_since"},
    "delivery.failed": {"delivery_id", "webhook_id", "endpoint", "table", "last_status_code", "last_error"},
}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


@pytest.fixture
def threshold(cluster):
    cluster.set("webhook.alert_threshold", "3")
    yield 3
    cluster.reset("webhook.alert_threshold")


def events_of(requests, secret):
    """Each request parsed as an event envelope, its signatures checked."""
    out = []
    for r in requests:
        assert verify(r, secret) == (True, True)
        assert r.headers["webhook-id"].startswith("msg_")
        body = json.loads(r.body)
        assert set(body) == {"type", "timestamp", "data"}, body
        assert RFC3339.match(body["timestamp"]), body["timestamp"]
        assert set(body["data"]) == KEYS[body["type"]], body
        out.append(body)
    return out


def quiet(db):
    """Nothing left to send (every delivery delivered or dead-lettered)."""
    wait_worker_idle(db)


def test_threshold_raises_once_then_resolves_once(db, receiver, name, threshold):
    make_table(db, name)
    watcher = endpoint(db, f"{name}_w", receiver.url(f"/ok/{name}/w"))
    # Fails 5 attempts in a row, then succeeds: crosses the threshold (3) once.
    endpoint(db, name, receiver.url(f"/flaky/5/{name}"))
    both = ["endpoint.alert.raised", "endpoint.alert.resolved"]
    db.execute("SELECT webhook.subscribe_events(%s, %s)", (f"{name}_w", both))
    db.execute("SELECT webhook.subscribe_events(%s, %s)", (name, both))
    db.execute(f"SELECT webhook.watch('{name}', %s)", (name,))
    db.execute(f"INSERT INTO {name} VALUES (1, 'a')")
    got = receiver.wait_for(2, f"/ok/{name}/w", timeout=20)
    quiet(db)
    events = events_of(receiver.requests(f"/ok/{name}/w"), watcher)
    assert [e["type"] for e in events] == both
    raised, resolved = (e["data"] for e in events)
    assert raised == {"endpoint": name, "consecutive_failures": 3, "last_status_code": 500,
                      "last_error": raised["last_error"]}
    assert isinstance(raised["last_error"], str) and "500" in raised["last_error"]
    assert resolved["endpoint"] == name and isinstance(resolved["down_for_ms"], int)
    assert resolved["down_for_ms"] >= 100 + 200 + 400 + 800 + 1600 - 50
    # The failing endpoint got its row's 6 attempts and no event about itself.
    own = receiver.requests(f"/flaky/5/{name}")
    assert len(own) == 6 and all("type" not in json.loads(r.body) for r in own)
    assert one(db, "SELECT consecutive_failures FROM webhook.endpoint_stats WHERE endpoint = %s", name) == 0
    # Event deliveries are marked as such in the queue.
    rows = db.execute("SELECT d.operation, d.table_name, d.subscription_id, d.message_id"
                      " FROM webhook.delivery d JOIN webhook.endpoint e ON e.id = d.endpoint_id"
                      " WHERE e.name = %s ORDER BY d.id", (f"{name}_w",)).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(t, None, None) for t in both]
    assert {r[3] for r in rows} == {r.headers["webhook-id"] for r in got}


def test_endpoint_disabled_after_disable_after(db, cluster, receiver, name):
    cluster.set("webhook.disable_after", "1s")
    try:
        make_table(db, name)
        watcher = endpoint(db, f"{name}_w", receiver.url(f"/ok/{name}/w"))
        endpoint(db, name, receiver.url(f"/status/500/{name}"))
        db.execute("SELECT webhook.subscribe_events(%s, %s)", (f"{name}_w", ["endpoint.disabled"]))
        db.execute("SELECT webhook.subscribe_events(%s, %s)", (name, ["endpoint.disabled"]))
        db.execute(f"SELECT webhook.watch('{name}', %s)", (name,))
        db.execute(f"INSERT INTO {name} VALUES (1, 'a')")
        wait_until(lambda: one(db, "SELECT NOT enabled FROM webhook.endpoints WHERE name = %s", name),
                   15, "the endpoint to be disabled")
        receiver.wait_for(1, f"/ok/{name}/w")
        quiet(db)
        [event] = events_of(receiver.requests(f"/ok/{name}/w"), watcher)
        assert event["type"] == "endpoint.disabled"
        assert event["data"]["endpoint"] == name and RFC3339.match(event["data"]["failing_since"])
        first = receiver.requests(f"/status/500/{name}")[0].received
        last = receiver.requests(f"/status/500/{name}")[-1].received
        assert last - first >= 1.0  # failing for disable_after, not fewer attempts
        # Its deliveries now wait, as for a manual disable; nothing went to it about itself.
        n = len(receiver.requests(f"/status/500/{name}"))
        db.execute(f"INSERT INTO {name} VALUES (2, 'b')")
        age = "SELECT extract(epoch FROM oldest_due_age)::float8 FROM webhook.endpoint_stats WHERE endpoint = %s"
        wait_until(lambda: (one(db, age, name) or 0) > 0.5, 5, "the queued change to wait")
        assert len(receiver.requests(f"/status/500/{name}")) == n
        assert all("type" not in json.loads(r.body) for r in receiver.requests(f"/status/500/{name}"))
        # Enabled again, it fails on; disable_after counts from the re-enable, not from the
        # first failure, so it is not disabled by its first attempt.
        enabled_at = one(db, "SELECT clock_timestamp()")
        db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
        wait_until(lambda: one(db, "SELECT NOT enabled FROM webhook.endpoints WHERE name = %s", name),
                   15, "the endpoint to be disabled again")
        second = events_of(receiver.wait_for(2, f"/ok/{name}/w"), watcher)[1]
        assert second["type"] == "endpoint.disabled"
        since = one(db, "SELECT %s::timestamptz", second["data"]["failing_since"])
        assert since >= enabled_at
        attempts = receiver.requests(f"/status/500/{name}")[n:]
        assert attempts[-1].received - attempts[0].received >= 1.0
    finally:
        cluster.reset("webhook.disable_after")


def test_dead_letter_sends_delivery_failed_and_events_never_raise_events(db, receiver, name, threshold):
    make_table(db, name)
    # The subscriber of every endpoint event is down too: its event deliveries fail and are
    # dead-lettered, and must raise nothing (no alert about it, no delivery.failed for them).
    endpoint(db, f"{name}_w", receiver.url(f"/status/503/{name}/w"))
    watcher_ok = endpoint(db, f"{name}_v", receiver.url(f"/ok/{name}/v"))
    every = ["endpoint.alert.raised", "endpoint.alert.resolved", "endpoint.disabled", "delivery.failed"]
    db.execute("SELECT webhook.subscribe_events(%s, %s)", (f"{name}_w", every))
    db.execute("SELECT webhook.subscribe_events(%s, %s)", (f"{name}_v", ["delivery.failed"]))
    endpoint(db, name, receiver.url(f"/status/500/{name}"))
    db.execute(f"SELECT webhook.watch('{name}', %s)", (name,))
    db.execute(f"INSERT INTO {name} VALUES (1, 'a')")
    delivery_id = one(db, "SELECT id FROM webhook.deliveries WHERE endpoint = %s", name)
    [failed] = events_of(receiver.wait_for(1, f"/ok/{name}/v", timeout=20), watcher_ok)
    # Both event deliveries to the failing subscriber go through all their attempts.
    wait_until(lambda: len(receiver.requests(f"/status/503/{name}/w")) >= 12, 30, "the events' 12 attempts")
    quiet(db)
    assert failed["type"] == "delivery.failed"
    webhook_id = receiver.requests(f"/status/500/{name}")[0].headers["webhook-id"]
    assert failed["data"] == {"delivery_id": delivery_id, "webhook_id": webhook_id, "endpoint": name,
                              "table": f"public.{name}", "last_status_code": 500,
                              "last_error": failed["data"]["last_error"]}
    types = sorted(json.loads(r.body)["type"] for r in receiver.requests(f"/status/503/{name}/w"))
    assert types == ["delivery.failed"] * 6 + ["endpoint.alert.raised"] * 6
    # No loops: the subscriber's failures counted nothing and raised nothing.
    stats = db.execute("SELECT consecutive_failures, last_failure_at FROM webhook.endpoint_stats"
                       " WHERE endpoint = %s", (f"{name}_w",)).fetchone()
    assert stats == (0, None)
    ops = db.execute("SELECT d.operation, e.name, d.status FROM webhook.delivery d"
                     " JOIN webhook.endpoint e ON e.id = d.endpoint_id"
                     " WHERE e.name LIKE %s AND position('.' in d.operation) > 0 ORDER BY d.id",
                     (f"{name}\\_%",)).fetchall()
    assert sorted(ops) == sorted([("endpoint.alert.raised", f"{name}_w", "failed"),
                                  ("delivery.failed", f"{name}_w", "failed"),
                                  ("delivery.failed", f"{name}_v", "delivered")])
