"""Real PostgreSQL cluster + real HTTP receiver on 127.0.0.1, shared by the e2e tests and the demo.

PostgreSQL refuses to run as root, so the cluster belongs to the `postgres` OS user and is driven
through runuser; the tests themselves connect over TCP to 127.0.0.1.
"""
import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time

import psycopg
import psycopg.sql
from standardwebhooks.webhooks import Webhook

# PG_CONFIG names another PostgreSQL 15 installation (a copy, for a second build beside this one).
PG_BIN = (subprocess.run([os.environ["PG_CONFIG"], "--bindir"], check=True, capture_output=True,
                         text=True).stdout.strip()
          if os.environ.get("PG_CONFIG") else "/usr/lib/postgresql/15/bin")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(*cmd):
    prefix = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    return subprocess.run(prefix + list(cmd), check=True, capture_output=True, text=True)


class Cluster:
    """A throwaway cluster with the webhook worker preloaded (preload=False: a plain cluster).

    settings: extra postgresql.conf lines, {name: value} with values already quoted as the
    file wants them (e.g. {"webhook.timeout": "'2s'"}). Usable as a context manager."""

    def __init__(self, settings=None, preload=True):
        self.dir = tempfile.mkdtemp(prefix="webhook-e2e-")
        self.data = os.path.join(self.dir, "data")
        self.log = os.path.join(self.dir, "server.log")
        self.port = free_port()
        self.port_retries = 0  # how often start() had to move to another port
        try:
            self._init(settings, preload)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _init(self, settings, preload):
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
        as_postgres(f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        conf = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "webhook.database": "'postgres'",
            "webhook.allowed_networks": "'127.0.0.0/8,::1/128'",
            "fsync": "off",
        }
        if preload:
            conf["shared_preload_libraries"] = "'webhook'"
        conf.update(settings or {})
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")

    # What the server log says when the chosen port was taken between free_port() and start.
    PORT_TAKEN = ("could not bind", "address already in use", "could not create any tcp/ip sockets")
    START_TRIES = 5

    def _set_port(self, port):
        """Rewrite every port line of postgresql.conf (the last one wins anyway)."""
        conf = os.path.join(self.data, "postgresql.conf")
        with open(conf) as f:
            text = f.read()
        text = re.sub(r"(?m)^port = \d+$", f"port = {port}", text)
        with open(conf, "w") as f:
            f.write(text)
        self.port = port

    def start(self):
        """pg_ctl start; free_port() only found a port free a moment ago, so when the server
        cannot bind it (someone took it meanwhile) pick another and try again, a few times."""
        for attempt in range(self.START_TRIES):
            log_before = len(self.log_text())
            try:
                as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")
                return self
            except subprocess.CalledProcessError as e:
                new_log = self.log_text()[log_before:].lower()
                if attempt + 1 < self.START_TRIES and any(m in new_log for m in self.PORT_TAKEN):
                    self.port_retries += 1
                    self._set_port(free_port())
                    continue
                raise RuntimeError(f"pg_ctl start failed: {e.stdout}{e.stderr}\n{self.log_tail()}") from None
        raise AssertionError("unreachable")

    def stop(self, mode="fast"):
        """mode: 'smart', 'fast' or 'immediate' (pg_ctl -m)."""
        as_postgres(f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode="fast"):
        self.stop(mode)
        return self.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def cleanup(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, user="postgres"):
        return f"host=127.0.0.1 port={self.port} dbname=postgres user={user}"

    def connect(self, user="postgres", autocommit=True):
        return psycopg.connect(self.dsn(user), autocommit=autocommit)

    def _conf_load_time(self):
        with self.connect() as c:  # a new backend: it starts with the postmaster's configuration
            return c.execute("SELECT pg_conf_load_time()").fetchone()[0]

    def _reload_and_wait(self, name, before, from_auto_conf, timeout=10.0):
        """Wait until a NEW connection sees the reloaded configuration: its pg_conf_load_time()
        is past `before` and `name` comes (or no longer comes) from postgresql.auto.conf.

        The postmaster rereads the files and then sends SIGHUP to every child, the worker
        included, before it forks any backend with the new configuration; so once a new
        connection sees it, the worker has been signalled, and its latch wakes it to reread at
        once. Tests that need the worker's own reload still observe its effect (a timeout's
        length, a retention pass, a delivery let through), each with a deadline."""
        deadline = time.monotonic() + timeout
        while True:
            with self.connect() as c:
                loaded, sourcefile = c.execute(
                    "SELECT pg_conf_load_time(), (SELECT sourcefile FROM pg_settings WHERE name = %s)",
                    (name,)).fetchone()
            if loaded > before and (sourcefile or "").endswith("postgresql.auto.conf") == from_auto_conf:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"configuration reload not seen within {timeout}s ({name}: {sourcefile})")
            time.sleep(0.01)

    def set(self, name, value):  # noqa: A003
        """Change a reloadable setting for the whole cluster (the worker rereads it on SIGHUP)."""
        before = self._conf_load_time()
        with self.connect() as c:
            c.execute(psycopg.sql.SQL("ALTER SYSTEM SET {} = {}").format(psycopg.sql.SQL(name), psycopg.sql.Literal(value)))
            c.execute("SELECT pg_reload_conf()")
        self._reload_and_wait(name, before, from_auto_conf=True)

    def reset(self, name):
        """Back to the configuration file's value (ALTER SYSTEM RESET) and reload."""
        before = self._conf_load_time()
        with self.connect() as c:
            c.execute(psycopg.sql.SQL("ALTER SYSTEM RESET {}").format(psycopg.sql.SQL(name)))
            c.execute("SELECT pg_reload_conf()")
        self._reload_and_wait(name, before, from_auto_conf=False)

    set_guc = set

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_tail(self, n=40):
        return "".join(self.log_text().splitlines(keepends=True)[-n:])


class Headers(dict):
    """Request headers; lookups ignore case (keys are stored lower-cased). A repeated header
    keeps every value: get_all(name) lists them in order, the mapping itself holds the first."""

    def __init__(self, items=()):
        pairs = list(items.items()) if hasattr(items, "items") else list(items)
        super().__init__()
        self._all = {}
        for k, v in pairs:
            self._all.setdefault(k.lower(), []).append(v)
            if k.lower() not in self:
                super().__setitem__(k.lower(), v)

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def __contains__(self, key):
        return super().__contains__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)

    def get_all(self, key):
        """Every value sent for this header, in order ([] when absent)."""
        return list(self._all.get(key.lower(), []))


class Request:
    def __init__(self, method, path, headers, body, peer=None):
        self.peer = peer  # (address, port) of the sender's connection
        self.received = time.monotonic()
        self.wall = time.time()
        self.method = method
        self.path = path
        self.headers = Headers(headers)
        self.body = body

    def json(self):
        return json.loads(self.body)


def carries_id(body, wanted):
    """Whether a rownd or census body carries a record whose "id" is `wanted` (text)."""
    try:
        data = json.loads(body)["data"]
    except (ValueError, KeyError, TypeError):
        return False
    records = data if isinstance(data, list) else [data]
    return any(isinstance(r, dict) and str(r.get("id")) == wanted for r in records)


class Receiver:
    """HTTP/1.1 keep-alive receiver; the path picks the behaviour:
    /ok -> 200, /status/<code> -> that code, /sleep/<s> -> sleep then 200,
    /status/3xx also sends Location: <this receiver>/ok/redirected<path> (redirect_target),
    /flaky/<n>[/<tag>] -> 500 for the first n requests on that exact path, then 200,
    /retry-after/<s> -> 429 with Retry-After: <s>, /big/<bytes> -> 200 with a body that long,
    /failkey/<id> -> 500 when the body carries a record whose "id" is <id> (rownd data, or any
    record of a census batch), else 200,
    and the raw-socket misbehaviours of hostile(). Anything after the behaviour's own segments
    is a free tag, so each test can use paths of its own (/ok/<test>, /status/500/<test>)."""

    def __init__(self):
        self._log = []
        self.lock = threading.Lock()
        self.counts = {}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the second waits for the
            # client's delayed ACK (40 ms per request).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: not a delivery
                    self.close_connection = True
                    return
                with receiver.lock:
                    receiver._log.append(
                        Request(self.command, self.path, self.headers.items(), body, self.client_address))
                    receiver.counts[self.path] = receiver.counts.get(self.path, 0) + 1
                    seen = receiver.counts[self.path]
                parts = self.path.strip("/").split("/")
                if receiver.hostile(self, parts):
                    return
                code, extra = 200, {}
                if parts[0] == "status":
                    code = int(parts[1])
                    if 300 <= code < 400:  # a target of its own, so a test can see it got nothing
                        extra["Location"] = receiver.url(receiver.redirect_target(self.path))
                elif parts[0] == "sleep":
                    time.sleep(float(parts[1]))
                elif parts[0] == "flaky" and seen <= int(parts[1]):
                    code = 500
                elif parts[0] == "failkey" and carries_id(body, parts[1]):
                    code = 500
                elif parts[0] == "retry-after":
                    code, extra = 429, {"Retry-After": parts[1]}
                payload = b"received"
                if parts[0] == "big":
                    payload = b"x" * int(parts[1])
                self.send_response(code)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except OSError:
                    pass

            # GET and DELETE too: a client wrongly following a 302/303 switches to GET, and
            # that must be recorded to be caught.
            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def hostile(handler, parts):
        """Misbehaviours that need the raw connection; True when the response was handled."""
        kind = parts[0]
        conn = handler.connection
        if kind == "drip":  # headers promise 100 bytes, then one byte a second (at most 8)
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            handler.wfile.flush()
            for _ in range(8):
                try:
                    time.sleep(1)
                    handler.wfile.write(b"x")
                    handler.wfile.flush()
                except OSError:
                    break
        elif kind == "reset":  # half a response, then a TCP reset
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            handler.wfile.flush()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        elif kind == "garbage":  # not HTTP at all
            handler.wfile.write(b"\x00\x01 this is not HTTP\r\n\r\n")
            handler.wfile.flush()
        elif kind == "huge":  # a 100 MB body, written until the client hangs up
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n")
            chunk = b"y" * 65536
            try:
                for _ in range(104857600 // 65536):
                    handler.wfile.write(chunk)
            except OSError:
                pass
        else:
            return False
        handler.close_connection = True
        return True

    @staticmethod
    def redirect_target(path):
        """Where /status/3xx/... points its Location header."""
        return "/ok/redirected" + path

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def requests(self, path=None):
        """Every request received so far (on exactly this path, if given), in arrival order."""
        with self.lock:
            return [r for r in self._log if path is None or r.path == path]

    received = requests

    def clear(self):
        with self.lock:
            self._log.clear()
            self.counts.clear()

    def wait_for(self, count, path=None, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        got = self.received(path)
        raise AssertionError(f"expected {count} requests on {path}, got {len(got)} within {timeout}s")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


SIGNED_HEADERS = ("x-signature", "webhook-id", "webhook-timestamp", "webhook-signature")


def verify(request, secret):
    """(X-Signature ok, Standard Webhooks ok), each checked by an independent implementation.

    First asserts that each signing header came exactly once: a receiver (or a verifier
    library) picking the first or the last of two copies could accept what the other rejects."""
    for header in SIGNED_HEADERS:
        values = request.headers.get_all(header)
        assert len(values) == 1, f"{header} sent {len(values)} times: {values}"
    expected = base64.b64encode(hmac.new(secret.encode(), request.body, hashlib.sha256).digest())
    x_ok = hmac.compare_digest(expected, request.headers.get("x-signature", "").encode())
    try:
        Webhook(secret).verify(request.body, request.headers)
        std_ok = True
    except Exception:
        std_ok = False
    return x_ok, std_ok
