"""The delivery worker's lifecycle and limits: leases, connection failures, response size,
configuration reload, clean stop."""
import socket
import time

import psycopg
import pytest

from conftest import endpoint, make_table, message_id, one, wait_status, wait_until
from harness import Cluster, Receiver


def test_expired_lease_is_reclaimed(db, receiver, name):
    """A delivery left 'delivering' by a dead worker is sent again once its lease expires."""
    make_table(db, name)
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    did = one(db, "SELECT id FROM webhook.deliveries WHERE endpoint = %s", name)
    # What a worker that died mid-attempt leaves behind: claimed, attempt 1 counted, lease running.
    db.execute("UPDATE webhook.delivery SET status = 'delivering', attempts = 1,"
               " next_attempt_at = now() + interval '1 second' WHERE id = %s", (did,))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    time.sleep(0.5)
    assert receiver.received(f"/ok/{name}") == []  # the lease still holds
    wait_status(db, did, "delivered", timeout=10)
    assert receiver.received(f"/ok/{name}")[0].headers["webhook-id"] == message_id(db, did)
    rows = db.execute("SELECT attempt, status_code, error FROM webhook.attempts WHERE delivery_id = %s"
                      " ORDER BY attempt", (did,)).fetchall()
    assert rows[0][0] == 1 and rows[0][1] is None and "lease expired" in rows[0][2]
    assert rows[1][:2] == (2, 200)


def test_connection_refused_is_a_failed_attempt(db, name):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    make_table(db, name)
    endpoint(db, name, f"http://127.0.0.1:{closed}/")
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    did = one(db, "SELECT id FROM webhook.deliveries WHERE endpoint = %s", name)
    row = wait_until(lambda: db.execute("SELECT status_code, error FROM webhook.attempts"
                                        " WHERE delivery_id = %s AND attempt = 1", (did,)).fetchone(),
                     what="refused attempt")
    assert row[0] is None and "refused" in row[1].lower()


def test_at_most_64_kib_of_a_response_is_kept(db, receiver, name):
    make_table(db, name)
    endpoint(db, name, receiver.url("/big/1000000"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    did = one(db, "SELECT id FROM webhook.deliveries WHERE endpoint = %s", name)
    wait_status(db, did, "delivered")
    assert one(db, "SELECT length(response_body) FROM webhook.attempts WHERE delivery_id = %s", did) == 65536


@pytest.fixture
def own_cluster():
    c = Cluster({"webhook.timeout": "'5s'"}).start()
    r = Receiver()
    try:
        with c.connect() as db:
            db.execute("CREATE EXTENSION webhook")
        yield c, r
    finally:
        r.close()
        c.cleanup()


def worker_pid(db):
    return one(db, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'")


def test_reload_applies_settings_and_sigterm_stops_cleanly(own_cluster):
    cluster, receiver = own_cluster
    with cluster.connect() as db:
        wait_until(lambda: worker_pid(db) is not None, what="the worker to start")
        cluster.set("webhook.timeout", "500ms")
        make_table(db, "slow")
        endpoint(db, "slow", receiver.url("/sleep/2/slow"))
        db.execute("SELECT webhook.watch('slow', 'slow')")
        db.execute("INSERT INTO slow VALUES (1, 'x')")
        row = wait_until(lambda: db.execute("SELECT error, duration_ms FROM webhook.attempts"
                                            " WHERE attempt = 1").fetchone(), what="timed-out attempt")
        assert "500 ms" in row[0] and row[1] < 1500
        pid = worker_pid(db)
        db.execute("SELECT pg_terminate_backend(%s)", (pid,))
        wait_until(lambda: worker_pid(db) is None, what="worker exit")
        wait_until(lambda: "webhook delivery worker 0 stopped" in cluster.log_tail(200), what="clean stop log")
        assert "exited with exit code 1" not in cluster.log_tail(200)


def test_private_destinations_are_refused_unless_allowed(receiver):
    """Without webhook.allowed_networks, loopback is refused on the address actually resolved."""
    cluster = Cluster({"webhook.allowed_networks": "''"}).start()
    try:
        with cluster.connect() as db:
            db.execute("CREATE EXTENSION webhook")
            make_table(db, "guarded")
            endpoint(db, "by_ip", receiver.url("/ok/guarded-ip"))
            endpoint(db, "by_name", f"http://localhost:{receiver.port}/ok/guarded-name")
            db.execute("SELECT webhook.watch('guarded', 'by_ip')")
            db.execute("SELECT webhook.watch('guarded', 'by_name')")
            db.execute("INSERT INTO guarded VALUES (1, 'x')")
            errors = wait_until(lambda: [e for (e,) in db.execute(
                "SELECT error FROM webhook.attempts WHERE attempt = 1 ORDER BY delivery_id").fetchall()] or None
                if one(db, "SELECT count(*) FROM webhook.attempts WHERE attempt = 1") == 2 else None,
                what="two refused attempts")
            assert all("refused" in e and "loopback" in e and "webhook.allowed_networks" in e for e in errors), errors
            status, _, error = db.execute("SELECT * FROM webhook.test_endpoint('by_ip')").fetchone()
            assert status is None and "127.0.0.1" in error
            assert receiver.received("/ok/guarded-ip") == [] and receiver.received("/ok/guarded-name") == []
            with pytest.raises(Exception) as err:
                db.execute("ALTER SYSTEM SET webhook.allowed_networks = '10.0.0.0/33'")
            assert "10.0.0.0/33" in str(err.value)
            cluster.set("webhook.allowed_networks", "127.0.0.0/8,::1/128")
            db.execute("SELECT webhook.redeliver_failed('by_ip')")  # may still be retrying: wait below
            receiver.wait_for(1, "/ok/guarded-ip", timeout=20)
    finally:
        cluster.cleanup()


def test_https_verifies_certificates(db, name, tmp_path):
    """A self-signed certificate on 127.0.0.1 is refused; no setting turns verification off."""
    import http.server
    import ssl
    import subprocess
    import threading

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint(db, name, f"https://127.0.0.1:{server.server_address[1]}/hook")
        status, _, error = db.execute("SELECT * FROM webhook.test_endpoint(%s)", (name,)).fetchone()
        assert status is None and "certificate" in error.lower(), error
        assert hits == []
        knobs = db.execute("SELECT name FROM pg_settings WHERE name LIKE 'webhook.%' AND"
                            " (name ~ '(tls|ssl|verify|insecure|cert)')").fetchall()
        assert knobs == []
    finally:
        server.shutdown()


def test_purge_and_retention(cluster, db, receiver, name):
    make_table(db, name)
    endpoint(db, f"{name}_bad", receiver.url(f"/status/404/{name}"))
    endpoint(db, f"{name}_ok", receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, f"{name}_bad"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, f"{name}_ok"))
    db.execute(f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b')")
    failed = [r[0] for r in db.execute("SELECT id FROM webhook.deliveries WHERE endpoint = %s", (f"{name}_bad",))]
    for did in failed:
        wait_status(db, did, "failed", timeout=20)
    assert one(db, "SELECT webhook.purge('failed', '1 hour', %s)", f"{name}_bad") == 0  # too recent
    assert one(db, "SELECT webhook.purge('failed', endpoint => %s)", f"{name}_bad") == 2
    assert one(db, "SELECT count(*) FROM webhook.attempts WHERE delivery_id = ANY(%s)", failed) == 0
    delivered = [r[0] for r in db.execute("SELECT id FROM webhook.deliveries WHERE endpoint = %s", (f"{name}_ok",))]
    for did in delivered:
        wait_status(db, did, "delivered")
    # Older than the retention about to be set (the database's clock decides, as the worker's does).
    wait_until(lambda: one(db, "SELECT bool_and(delivered_at < clock_timestamp() - interval '1.1 s')"
                               " FROM webhook.deliveries WHERE id = ANY(%s)", delivered),
               timeout=5, what="the delivered deliveries to be older than 1 s")
    cluster.set("webhook.retention", "1s")  # a reload makes the worker apply retention at once
    try:
        wait_until(lambda: one(db, "SELECT count(*) FROM webhook.deliveries WHERE id = ANY(%s)", delivered) == 0,
                   timeout=10, what="retention to remove delivered deliveries")
    finally:
        cluster.reset("webhook.retention")


def test_per_endpoint_concurrency_cap(cluster, db, receiver, name):
    """A slow endpoint gets at most webhook.max_concurrency_per_endpoint requests at once."""
    cluster.set("webhook.max_concurrency_per_endpoint", "2")
    try:
        make_table(db, name)
        endpoint(db, name, receiver.url(f"/sleep/1/{name}"))
        db.execute("SELECT webhook.watch(%s, %s)", (name, name))
        db.execute(f"INSERT INTO {name} SELECT g, 'x' FROM generate_series(1, 6) g")
        got = receiver.wait_for(6, f"/sleep/1/{name}", timeout=15)
        starts = sorted(r.received for r in got)
        most_at_once = max(sum(1 for t in starts if s <= t < s + 0.8) for s in starts)
        assert most_at_once == 2, starts
    finally:
        cluster.reset("webhook.max_concurrency_per_endpoint")


def test_create_extension_warns_when_nothing_would_deliver(cluster, db):
    """In a database the worker does not serve, CREATE EXTENSION says so."""
    db.execute("CREATE DATABASE elsewhere")
    try:
        with psycopg.connect(cluster.dsn().replace("dbname=postgres", "dbname=elsewhere"), autocommit=True) as other:
            notices = []
            other.add_notice_handler(lambda n: notices.append(n.message_primary))
            other.execute("CREATE EXTENSION webhook")
        assert any('connects to database "postgres", not to "elsewhere"' in n for n in notices), notices
    finally:
        db.execute("DROP DATABASE elsewhere")


def test_late_commit_with_an_earlier_time_is_not_starved_by_a_backlog(cluster, db, receiver, name):
    """Claims resume after the last row taken (next_attempt_at, id). A transaction that began
    before a backlog was queued, and commits while the backlog drains, queues a row that sorts
    before that cursor: the periodic full scan must find it within about a second, not after the
    backlog (2000 requests of 50 ms, 16 at a time: over 6 s)."""
    path = f"/sleep/0.05/{name}"
    make_table(db, name)
    endpoint(db, name, receiver.url(path))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    with cluster.connect(autocommit=False) as late:
        late.execute(f"INSERT INTO {name} VALUES (0, 'late')")  # next_attempt_at: this transaction's start
        time.sleep(0.05)
        db.execute(f"INSERT INTO {name} SELECT g, 'backlog' FROM generate_series(1, 2000) g")
        wait_until(lambda: len(receiver.received(path)) >= 50, what="the backlog to start draining")
        late.commit()
        committed = time.monotonic()
    late_id = message_id(db, one(db, "SELECT min(id) FROM webhook.deliveries WHERE endpoint = %s", name))
    wait_until(lambda: any(r.headers["webhook-id"] == late_id for r in receiver.received(path)),
               timeout=15, what="the late row to be sent")
    waited = time.monotonic() - committed
    left = one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s AND status <> 'delivered'", name)
    assert waited < 3.0 and left > 500, (waited, left)
