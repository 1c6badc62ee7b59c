"""Hostile receivers: each misbehaviour becomes a recorded failed attempt, memory stays bounded,
the worker survives, and a healthy endpoint keeps getting its deliveries promptly throughout."""
import socket
import time

from conftest import endpoint, make_table, wait_until

HOSTILE = {
    # name: (path, expected status_code of attempt 1, text expected in its error)
    "e500": ("/status/500/{n}", 500, "HTTP 500"),
    "e404": ("/status/404/{n}", 404, "HTTP 404"),
    "e410": ("/status/410/{n}", 410, "HTTP 410"),
    "e429": ("/retry-after/3", 429, "HTTP 429"),
    "redirect": ("/status/301/{n}", 301, "HTTP 301"),
    "drip": ("/drip/{n}", 200, "timeout"),  # the status line came; the body never completed
    "sleep": ("/sleep/6/{n}", None, "timeout"),
    "reset": ("/reset/{n}", 200, "disconnected"),  # half a response, then RST
    "garbage": ("/garbage/{n}", None, ""),
    "huge": ("/huge/{n}", 200, None),
}


def worker(db):
    return db.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'").fetchone()


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_hostile_receivers(db, receiver, name):
    (pid,) = worker(db)
    rss_before = rss_kb(pid)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        refused_port = s.getsockname()[1]
    cases = dict(HOSTILE, refused=(None, None, "refused"))
    for case, (path, _, _) in cases.items():
        url = f"http://127.0.0.1:{refused_port}/" if path is None else receiver.url(path.format(n=name))
        make_table(db, f"{name}_{case}")
        endpoint(db, f"{name}_{case}", url)
        db.execute("SELECT webhook.watch(%s, %s)", (f"{name}_{case}", f"{name}_{case}"))
    make_table(db, f"{name}_healthy")
    endpoint(db, f"{name}_healthy", receiver.url(f"/ok/{name}/healthy"))
    db.execute("SELECT webhook.watch(%s, %s)", (f"{name}_healthy", f"{name}_healthy"))

    for case in cases:
        db.execute(f"INSERT INTO {name}_{case} VALUES (1, 'x')")
    # While the hostile ones are in flight, healthy deliveries keep arriving within a second.
    for i in range(10):
        start = time.monotonic()
        db.execute(f"INSERT INTO {name}_healthy VALUES (%s, 'ok')", (i,))
        receiver.wait_for(i + 1, f"/ok/{name}/healthy", timeout=5)
        assert time.monotonic() - start < 1.0
        time.sleep(0.2)

    def first_attempt(case):
        return db.execute(
            "SELECT a.status_code, a.error, a.duration_ms, length(a.response_body) FROM webhook.attempts a"
            " JOIN webhook.deliveries d ON d.id = a.delivery_id WHERE d.endpoint = %s AND a.attempt = 1",
            (f"{name}_{case}",)).fetchone()

    for case, (_, status, error) in cases.items():
        row = wait_until(lambda: first_attempt(case), timeout=15, what=f"{case} attempt")
        assert row[0] == status, (case, row)
        if error is None:
            assert row[1] is None, (case, row)
        else:
            assert row[1] is not None and error in row[1], (case, row)
    assert first_attempt("drip")[2] < 4000 and first_attempt("sleep")[2] < 4000  # webhook.timeout is 2s
    assert first_attempt("huge")[3] == 65536
    # 429 with Retry-After: 3 waits at least 3 s although the schedule says 100 ms.
    times = wait_until(lambda: (lambda r: r if len(r) == 2 else None)(db.execute(
        "SELECT a.started_at FROM webhook.attempts a JOIN webhook.deliveries d ON d.id = a.delivery_id"
        " WHERE d.endpoint = %s AND a.attempt <= 2 ORDER BY a.attempt", (f"{name}_e429",)).fetchall()),
        timeout=10, what="second 429 attempt")
    assert (times[1][0] - times[0][0]).total_seconds() >= 2.9
    # Nothing was delivered except the 2xx ones; the redirect target got nothing.
    statuses = dict(db.execute("SELECT endpoint, status FROM webhook.deliveries WHERE endpoint LIKE %s",
                               (f"{name}_%",)).fetchall())
    assert statuses.pop(f"{name}_huge") == "delivered" and statuses.pop(f"{name}_healthy") == "delivered"
    assert "delivered" not in statuses.values(), statuses
    # The same worker process survived it all, with bounded memory.
    assert worker(db) == (pid,)
    assert rss_kb(pid) - rss_before < 64 * 1024
