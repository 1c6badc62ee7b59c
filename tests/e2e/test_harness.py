"""The harness itself: what the other tests rely on it to catch or to survive."""
import base64
import hashlib
import hmac
import http.client
import socket

import pytest

from harness import Cluster, Request, verify


def test_receiver_keeps_repeated_headers_and_verify_refuses_them(receiver, name):
    """A request with X-Signature twice is recorded with both values, and verify() fails on it
    even though the first copy is a valid signature: a sender duplicating a signing header is
    caught wherever the suite verifies signatures."""
    secret = "whsec_" + "A" * 43 + "="
    body = b'{"n": 1}'
    good = Request("POST", "/", {}, body)
    sig = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    try:
        conn.putrequest("POST", f"/ok/{name}")
        for header, value in (("Content-Type", "application/json"), ("X-Signature", sig),
                              ("X-Signature", "bogus"), ("webhook-id", "1"), ("webhook-timestamp", "1"),
                              ("webhook-signature", "v1,x"), ("Content-Length", str(len(body)))):
            conn.putheader(header, value)
        conn.endheaders(body)
        assert conn.getresponse().status == 200
    finally:
        conn.close()
    (req,) = receiver.wait_for(1, f"/ok/{name}")
    assert req.headers.get_all("x-signature") == [sig, "bogus"]
    assert req.headers["X-Signature"] == sig
    with pytest.raises(AssertionError, match="x-signature sent 2 times"):
        verify(req, secret)
    with pytest.raises(AssertionError, match="x-signature sent 0 times"):
        verify(good, secret)


def test_cluster_start_moves_off_a_taken_port():
    """Between free_port() and pg_ctl start another process may take the port: start() then
    picks another one (rewriting postgresql.conf) instead of failing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with Cluster(preload=False) as cluster:
            cluster._set_port(port)  # as if someone took free_port()'s choice meanwhile
            cluster.start()
            assert cluster.port != port and cluster.port_retries == 1
            with cluster.connect() as c:
                assert c.execute("SHOW port").fetchone()[0] == str(cluster.port)
            # set() returns once a new connection sees the reloaded value (no fixed sleep).
            cluster.set("work_mem", "7MB")
            with cluster.connect() as c:
                assert c.execute("SHOW work_mem").fetchone()[0] == "7MB"
            cluster.reset("work_mem")
            with cluster.connect() as c:
                assert c.execute("SHOW work_mem").fetchone()[0] == "4MB"
