"""webhook benchmark: every figure of issue 3 as a ratio or rate measured in one run.

Run with ./scripts/bench.sh. Uses a throwaway cluster (harness.Cluster), nginx on 127.0.0.1 as
the receiver (it logs $msec and webhook-id for latency), pgbench for the write path, and a
listening socket that never answers as the timing-out endpoint. Bounded: every wait has a limit.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
from harness import Cluster  # noqa: E402

COLUMNS = "id bigserial PRIMARY KEY, name text, email text, score int, amount numeric, created timestamptz DEFAULT now()"
PLPGSQL_TRIGGER = """
CREATE FUNCTION plpgsql_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO plpgsql_queue (payload) VALUES (jsonb_build_object(
    'data', to_jsonb(NEW), 'redacted', '[]'::jsonb,
    'meta', jsonb_build_object('operation', 'data_insert',
            'lookup_values', jsonb_build_array(jsonb_build_object('field', 'id', 'value', NEW.id)))));
  RETURN NULL;
END $$;
"""
NGINX_CONF = """
daemon off; worker_processes 1; error_log {dir}/error.log warn; pid {dir}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  log_format hooks '$msec $http_webhook_id';
  access_log {dir}/access.log hooks buffer=256k flush=200ms;
  keepalive_requests 10000000; keepalive_timeout 120s;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok"; }} }}
}}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="webhook-bench-nginx-")
        self.port = free_port()
        with open(f"{self.dir}/nginx.conf", "w") as f:
            f.write(NGINX_CONF.format(dir=self.dir, port=self.port))
        self.proc = subprocess.Popen(["nginx", "-p", self.dir, "-c", f"{self.dir}/nginx.conf"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start")

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def log(self):
        time.sleep(0.5)  # buffer flush
        with open(f"{self.dir}/access.log") as f:
            return [line.split() for line in f if line.strip()]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def pgbench(cluster, script, seconds, clients=2):
    path = tempfile.mktemp(suffix=".sql")
    with open(path, "w") as f:
        f.write(script)
    out = subprocess.run(
        ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
         "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-f", path, "postgres"],
        check=True, capture_output=True, text=True).stdout
    os.unlink(path)
    return float(next(line for line in out.splitlines() if line.startswith("tps")).split()[2])


def timed(db, sql):
    start = time.perf_counter()
    db.execute(sql)
    return time.perf_counter() - start


def queued(db, endpoint):
    """Whether the endpoint still has deliveries to send. Cheap on a large queue (an index probe,
    not a count), so that polling does not take CPU from the drain being measured."""
    return db.execute("SELECT EXISTS (SELECT 1 FROM webhook.delivery d JOIN webhook.endpoint e ON e.id = d.endpoint_id"
                      " WHERE e.name = %s AND d.status IN ('pending', 'delivering'))", (endpoint,)).fetchone()[0]


def queue(db, table, endpoint, rows):
    """Queue `rows` deliveries for `endpoint` while it is disabled."""
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (endpoint,))
    db.execute(f"INSERT INTO {table} (name, email, score, amount) SELECT 'n' || g, 'e' || g || '@x.y', g, g * 1.5"
               f" FROM generate_series(1, {rows}) g")


def drain(db, endpoint, rows, limit_s, sample_rss=None):
    """Enable the endpoint and time until its queue is empty; returns deliveries/s. The time is
    the database's own: from enabling to the last delivered_at."""
    db.execute("VACUUM ANALYZE webhook.delivery")
    db.execute("CHECKPOINT")
    start = time.perf_counter()
    started_at = db.execute("SELECT clock_timestamp()").fetchone()[0]
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (endpoint,))
    rss = []
    while queued(db, endpoint):
        if time.perf_counter() - start > limit_s:
            raise RuntimeError(f"drain of {endpoint} did not finish in {limit_s}s")
        if sample_rss:
            rss.append(sample_rss())
        time.sleep(0.5)
    # Changes, not requests: a census message's changes show its state in the view.
    delivered, last = db.execute(
        "SELECT count(*), max(delivered_at) FROM webhook.deliveries WHERE endpoint = %s AND status = 'delivered'",
        (endpoint,)).fetchone()
    assert delivered >= rows, (delivered, rows)
    return rows / (last - started_at).total_seconds(), (max(rss) if rss else None)


def latency(db, nginx, table, commits=100, per_s=50):
    """Commit `commits` single-row inserts at `per_s`; p50/p99 ms from commit to receipt."""
    db.execute(f"TRUNCATE {table}")
    first = db.execute("SELECT coalesce(max(id), 0) FROM webhook.delivery").fetchone()[0]
    committed = {}
    start = time.monotonic()
    for i in range(commits):
        time.sleep(max(0, start + i / per_s - time.monotonic()))
        db.execute(f"INSERT INTO {table} (id, name) VALUES (%s, 'lat')", (i + 1,))
        committed[i + 1] = time.time()
    deadline = time.monotonic() + 30
    while db.execute("SELECT count(*) FROM webhook.delivery WHERE id > %s AND status = 'delivered'",
                     (first,)).fetchone()[0] < commits:
        if time.monotonic() > deadline:
            raise RuntimeError("latency probe: deliveries did not arrive in 30 s")
        time.sleep(0.1)
    ids = dict(db.execute("SELECT message_id, (payload::jsonb #>> '{data,id}')::bigint FROM webhook.delivery"
                          " WHERE id > %s", (first,)).fetchall())
    received = {w: float(ms) for ms, w in nginx.log() if w in ids}
    lat = sorted((received[m] - committed[r]) * 1000 for m, r in ids.items() if m in received and r in committed)
    return {"n": len(lat), "p50": lat[len(lat) // 2], "p99": lat[max(0, int(len(lat) * 0.99) - 1)]}


def burst(db, table, rows, limit_s=300):
    """Commit one `rows`-row INSERT ... SELECT to a watched table whose endpoint is enabled, as a
    user's first burst arrives; deliveries/s from the commit to the last delivered_at."""
    first = db.execute("SELECT coalesce(max(id), 0) FROM webhook.delivery").fetchone()[0]
    db.execute(f"INSERT INTO {table} (name, email, score, amount)"
               f" SELECT 'n' || g, 'e' || g || '@x.y', g, g * 1.5 FROM generate_series(1, {rows}) g")
    committed_at = db.execute("SELECT clock_timestamp()").fetchone()[0]
    deadline = time.monotonic() + limit_s
    while db.execute("SELECT EXISTS (SELECT 1 FROM webhook.delivery WHERE id > %s"
                     " AND status IN ('pending', 'delivering'))", (first,)).fetchone()[0]:
        if time.monotonic() > deadline:
            done = db.execute("SELECT count(*) FROM webhook.delivery WHERE id > %s AND status = 'delivered'",
                              (first,)).fetchone()[0]
            return done / limit_s
        time.sleep(0.2)
    last = db.execute("SELECT max(delivered_at) FROM webhook.delivery WHERE id > %s", (first,)).fetchone()[0]
    return rows / (last - committed_at).total_seconds()


def statistics_states(cluster, nginx, rows):
    """Figure 8: a burst's drain and the latency after it, in each state the queue's planner
    statistics can be in when a burst arrives; each drain as a ratio to the best state (an
    ANALYZE taken while the burst is pending, which is what figures 3 and 5 measure)."""
    states = {}
    with cluster.connect() as db:
        db.execute("DROP EXTENSION IF EXISTS webhook CASCADE")
        db.execute("CREATE EXTENSION webhook")
        db.execute(f"CREATE TABLE b_burst ({COLUMNS})")
        db.execute("SELECT webhook.create_endpoint('burst', %s)", (nginx.url("/burst"),))
        db.execute("SELECT webhook.watch('b_burst', 'burst')")
        steps = [
            ("fresh install", []),
            ("delivered, then ANALYZE", ["ANALYZE webhook.delivery"]),
            ("TRUNCATE", ["TRUNCATE webhook.delivery, webhook.attempt"]),
            ("emptied, then VACUUM ANALYZE", ["DELETE FROM webhook.delivery", "DELETE FROM webhook.attempt",
                                              "VACUUM ANALYZE webhook.delivery, webhook.attempt"]),
        ]
        for name, sql in steps:
            for statement in sql:
                db.execute(statement)
            rate = burst(db, "b_burst", rows)
            states[name] = {"drain_per_s": rate, "latency_ms": latency(db, nginx, "b_burst")}
        # The best state: the burst queued while the endpoint is disabled, analyzed, then sent.
        queue(db, "b_burst", "burst", rows)
        rate, _ = drain(db, "burst", rows, 300)
        states["ANALYZE mid-burst (best)"] = {"drain_per_s": rate, "latency_ms": latency(db, nginx, "b_burst")}
    best = states["ANALYZE mid-burst (best)"]["drain_per_s"]
    for state in states.values():
        state["ratio_to_best"] = state["drain_per_s"] / best
    return states


def filters(cluster, url, seconds, rounds):
    """Figure 10: what a filter that sends nothing costs the writer. Single-row INSERTs into a
    table whose only subscription's predicate rejects every row, and single-row UPDATEs of a
    column that a `changed` filter does not name, each against the same statement on an
    unwatched table; rounds interleaved in rotated order, median of each."""
    with cluster.connect() as db:
        db.execute("SELECT webhook.create_endpoint('filters', %s)", (url,))
        for t in ("f_plain", "f_rejected", "f_unchanged"):
            db.execute(f"CREATE TABLE {t} ({COLUMNS})")
            db.execute(f"INSERT INTO {t} (name, email, score, amount)"
                       " SELECT 'n', 'e@x.y', g, g FROM generate_series(1, 10000) g")
        db.execute("SELECT webhook.watch('f_rejected', 'filters', predicate => 'score < 0')")
        db.execute("SELECT webhook.watch('f_unchanged', 'filters', changed => '{email}')")
        db.execute("VACUUM ANALYZE f_plain, f_rejected, f_unchanged")
        insert = "INSERT INTO {t} (name, email, score, amount) VALUES ('n', 'e@x.y', 42, 3.14);\n"
        update = "\\set id random(1, 10000)\nUPDATE {t} SET score = score + 1 WHERE id = :id;\n"
        variants = {"insert_plain": insert.format(t="f_plain"), "insert_rejected": insert.format(t="f_rejected"),
                    "update_plain": update.format(t="f_plain"), "update_unchanged": update.format(t="f_unchanged")}
        runs = {v: [] for v in variants}
        names = list(variants)
        for r in range(rounds):
            for v in names[r % len(names):] + names[:r % len(names)]:
                runs[v].append(pgbench(cluster, variants[v], seconds))
        tps = {v: statistics.median(got) for v, got in runs.items()}
        queued_rows = db.execute("SELECT count(*) FROM webhook.delivery d JOIN webhook.endpoint e"
                                 " ON e.id = d.endpoint_id WHERE e.name = 'filters'").fetchone()[0]
        return {"tps": tps, "tps_rounds": runs, "queued": queued_rows,
                # time per statement, watched over unwatched (target <= 1.1)
                "insert_time_ratio": tps["insert_plain"] / tps["insert_rejected"],
                "update_time_ratio": tps["update_plain"] / tps["update_unchanged"]}


def census_drain(cluster, nginx, rows):
    """Figures 3 and 9 in one cluster: `rows` queued changes drained by a rownd endpoint (one
    request each), then by a census endpoint (batch_size 100: one request per 100 records);
    changes delivered per second, and the ratio of the two."""
    with cluster.connect() as db:
        for fmt in ("rownd", "census"):
            db.execute(f"CREATE TABLE b_{fmt} ({COLUMNS})")
            db.execute("SELECT webhook.create_endpoint(%s, %s, format => %s)", (fmt, nginx.url(f"/{fmt}"), fmt))
            db.execute("SELECT webhook.watch(%s, %s)", (f"b_{fmt}", fmt))
        result = {}
        for fmt in ("rownd", "census"):
            queue(db, f"b_{fmt}", fmt, rows)
            result[f"{fmt}_changes_per_s"], _ = drain(db, fmt, rows, 600)
            result[f"{fmt}_requests"] = db.execute(
                "SELECT count(DISTINCT message_id) FROM webhook.deliveries WHERE endpoint = %s", (fmt,)).fetchone()[0]
            db.execute("TRUNCATE webhook.delivery, webhook.attempt")
        result["census_vs_rownd"] = result["census_changes_per_s"] / result["rownd_changes_per_s"]
    return result


def sync_run(cluster, nginx, rows, per_s=50, min_commits=500, limit_s=900):
    """Figure 11: a sync run of `rows` rows (a rownd endpoint) while single-row changes to another
    table commit at `per_s`: the run's reading rate (rows queued per second, from its start to
    the end of its reading) and the live changes' commit-to-receipt latency meanwhile."""
    with cluster.connect() as db:
        for t in ("s_big", "s_live"):
            db.execute(f"CREATE TABLE {t} ({COLUMNS})")
            db.execute("SELECT webhook.create_endpoint(%s, %s)", (t, nginx.url(f"/{t}")))
            db.execute("SELECT webhook.watch(%s, %s)", (t, t))
        db.execute("SELECT webhook.alter_endpoint('s_big', enabled => false)")  # no capture cost
        db.execute(f"INSERT INTO s_big (name, email, score, amount) SELECT 'n' || g, 'e' || g || '@x.y', g, g * 1.5"
                   f" FROM generate_series(1, {rows}) g")
        db.execute("TRUNCATE webhook.delivery, webhook.attempt")
        db.execute("VACUUM ANALYZE s_big")
        db.execute("SELECT webhook.alter_endpoint('s_big', enabled => true)")
        run = db.execute("SELECT webhook.sync('s_big', 's_big')").fetchone()[0]
        committed, read_end, i = {}, None, 0
        start = time.monotonic()
        while (read_end is None or i < min_commits) and time.monotonic() - start < limit_s:
            time.sleep(max(0, start + i / per_s - time.monotonic()))
            i += 1
            db.execute("INSERT INTO s_live (id, name) VALUES (%s, 'live')", (i,))
            committed[i] = time.time()
            if read_end is None and i % 5 == 0:
                status, at = db.execute("SELECT status, clock_timestamp() FROM webhook.sync_runs WHERE id = %s",
                                        (run,)).fetchone()
                if status not in ("queued", "reading"):
                    read_end = at
        started, queued = db.execute("SELECT started_at, rows_queued FROM webhook.sync_runs WHERE id = %s",
                                     (run,)).fetchone()
        deadline = time.monotonic() + 60
        while db.execute("SELECT count(*) FROM webhook.deliveries WHERE endpoint = 's_live' AND status = 'delivered'"
                         ).fetchone()[0] < i:
            if time.monotonic() > deadline:
                raise RuntimeError("sync figure: live deliveries did not arrive in 60 s")
            time.sleep(0.1)
        ids = dict(db.execute("SELECT message_id, (payload #>> '{data,id}')::bigint FROM webhook.deliveries"
                              " WHERE endpoint = 's_live'").fetchall())
        received = {w: float(ms) for ms, w in nginx.log() if w in ids}
        lat = sorted((received[m] - committed[r]) * 1000 for m, r in ids.items() if m in received and r in committed)
        reading_s = (read_end - started).total_seconds() if read_end else None
        # The run's remaining deliveries go with the cluster.
        return {"rows": rows, "rows_queued": queued, "reading_s": reading_s,
                "reading_rows_per_s": queued / reading_s if reading_s else None,
                "live": {"n": len(lat), "p50": lat[len(lat) // 2], "p99": lat[max(0, int(len(lat) * 0.99) - 1)]}}


def ordering(cluster, nginx, keys, changes_per_key, hot_changes):
    """Figure 12: ordering per key (SPEC §7). The same changes (`keys` distinct keys, each
    inserted then updated until it has `changes_per_key` changes, updates of different keys
    interleaved) drained by an unordered and an ordered endpoint, one after the other in this
    run; then `hot_changes` changes of one key drained by the ordered endpoint, which sends them
    one at a time: its rate against the request's own round trip (attempt duration) and the
    worker's turnaround between one attempt's end and the next one's start."""
    rows = keys * changes_per_key
    rates = {}
    with cluster.connect() as db:
        for mode in ("none", "key"):
            table, name = f"o_{mode}", f"ordering_{mode}"
            db.execute(f"CREATE TABLE {table} ({COLUMNS})")
            db.execute("SELECT webhook.create_endpoint(%s, %s)", (name, nginx.url(f"/{name}")))
            db.execute("SELECT webhook.alter_endpoint(%s, ordering => %s, enabled => false)", (name, mode))
            db.execute("SELECT webhook.watch(%s, %s)", (table, name))
            db.execute(f"INSERT INTO {table} (id, name, score) SELECT g, 'n', 0 FROM generate_series(1, {keys}) g")
            for _ in range(changes_per_key - 1):
                db.execute(f"UPDATE {table} SET score = score + 1")
        for mode in ("none", "key"):
            rates[mode], _ = drain(db, f"ordering_{mode}", rows, 600)
        db.execute("TRUNCATE webhook.delivery, webhook.attempt")
        db.execute("SELECT webhook.alter_endpoint('ordering_key', enabled => false)")
        db.execute("INSERT INTO o_key (id, name, score) VALUES (0, 'hot', 0)")
        for _ in range(hot_changes - 1):
            db.execute("UPDATE o_key SET score = score + 1 WHERE id = 0")
        hot, _ = drain(db, "ordering_key", hot_changes, 600)
        attempt_ms, turnaround_ms = db.execute(
            "SELECT avg(duration_ms), avg(gap_ms) FROM (SELECT duration_ms, extract(epoch FROM started_at"
            " - lag(started_at + duration_ms * interval '1 ms') OVER (ORDER BY started_at)) * 1000 AS gap_ms"
            " FROM webhook.attempt) a").fetchone()
        overlapping = db.execute(
            "SELECT count(*) FROM (SELECT started_at, lag(started_at + duration_ms * interval '1 ms')"
            " OVER (ORDER BY started_at) AS previous_end FROM webhook.attempt) a"
            " WHERE started_at < previous_end").fetchone()[0]
    return {"changes": rows, "keys": keys, "drain_unordered_per_s": rates["none"],
            "drain_ordered_per_s": rates["key"], "ordered_vs_unordered": rates["key"] / rates["none"],
            "hot_key_changes": hot_changes, "hot_key_per_s": hot, "hot_key_attempt_ms": float(attempt_ms),
            "hot_key_turnaround_ms": float(turnaround_ms),
            # one request per round trip: each leaves after the previous one's response
            "hot_key_requests_per_round_trip": 1.0 if overlapping == 0 else None,
            "hot_key_overlapping_requests": overlapping,
            "hot_key_share_of_time_in_flight": hot * float(attempt_ms) / 1000}


def worker_rss_mb(db):
    """The workers' private memory (RssAnon): VmRSS also counts the shared buffers they touched."""
    pids = [r[0] for r in db.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'")]
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total = max(total, next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")))
    return total / 1024


def new_cluster(extra=None):
    settings = {"webhook.timeout": "'2s'", "synchronous_commit": "off", "max_wal_size": "'4GB'",
                "shared_buffers": "'1GB'", "checkpoint_timeout": "'30min'"}
    settings.update(extra or {})
    c = Cluster(settings).start()
    with c.connect() as db:
        db.execute("CREATE EXTENSION webhook")
    return c


# ---------------------------------------------------------------------------------------------
# Figure 13: WAL capture (webhook.capture = 'wal', SPEC §8) against baselines in the same run.

INSERT_ONE = "INSERT INTO {t} (name, email, score, amount) VALUES ('n', 'e@x.y', 42, 3.14);\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def pgbench_count(cluster, script, seconds, clients=2):
    """pgbench as figure 1 runs it; returns (tps, transactions processed)."""
    path = tempfile.mktemp(suffix=".sql")
    with open(path, "w") as f:
        f.write(script)
    try:
        out = subprocess.run(
            ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres",
             "-c", str(clients), "-j", str(clients), "-T", str(seconds), "-f", path, "postgres"],
            check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(path)
    tps = float(next(line for line in out.splitlines() if line.startswith("tps")).split()[2])
    done = int(next(line for line in out.splitlines()
                    if line.startswith("number of transactions actually processed")).split(":")[1].split("/")[0])
    return tps, done


def machine_busy_s():
    """CPU seconds the whole machine spent busy (all cores) since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK  # minus idle and iowait


def process_cpu_s(pids, reaped=False):
    """CPU seconds of the processes; with `reaped`, also of their children that exited and were
    waited for (a postmaster's ended backends, this script's ended pgbench runs)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
            if reaped:
                total += (int(fields[13]) + int(fields[14])) / CLK_TCK  # cutime + cstime
        except OSError:
            pass
    return total


# The postmasters of figure 13's clusters (their processes are this run's own).
OWN = {"postmasters": []}


def own_cpu_s():
    """CPU seconds of this run's own processes: this script and each cluster's postmaster, with
    every process under them, live or ended (nginx and its worker, pgbench, the backends). An
    exited process not yet waited for (a zombie) shows no CPU: wait for its parent to reap it."""
    deadline = time.monotonic() + 2
    while True:
        parent, zombie = {}, set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parent[int(entry)] = int(fields[1])
                if fields[0] == "Z":
                    zombie.add(int(entry))
        mine = {os.getpid(), *OWN["postmasters"]}
        grew = True
        while grew:
            below = {p for p, pp in parent.items() if pp in mine} - mine
            mine |= below
            grew = bool(below)
        if not (mine & zombie) or time.monotonic() > deadline:
            return process_cpu_s(sorted(mine), reaped=True)
        time.sleep(0.01)


def backend_pids(db, backend_type):
    return [r[0] for r in db.execute("SELECT pid FROM pg_stat_activity WHERE backend_type = %s", (backend_type,))]


class Cpu:
    """CPU seconds of the machine, the capture worker and the delivery workers between two reads."""

    def __init__(self, db):
        self.pids = {"capture": backend_pids(db, "webhook capture worker"),
                     "delivery": backend_pids(db, "webhook delivery worker")}
        self.start = self._read()

    def _read(self):
        return {"machine": machine_busy_s(), "own": own_cpu_s(),
                **{k: process_cpu_s(p) for k, p in self.pids.items()}}

    def used(self):
        """CPU seconds since the start: the machine's, the capture and delivery workers', and
        `foreign`: the machine's minus this run's own processes' (another build or benchmark
        on the machine; what a disturbed measurement shows)."""
        end = self._read()
        used = {k: end[k] - self.start[k] for k in end}
        used["foreign"] = used.pop("machine") - used.pop("own")
        used["machine"] = end["machine"] - self.start["machine"]
        return used


def endpoint_id(db, name):
    return db.execute("SELECT id FROM webhook.endpoint WHERE name = %s", (name,)).fetchone()[0]


def changes_queued(db, endpoint):
    """Changes queued for the endpoint (a census batch's own row is not a change)."""
    return db.execute("SELECT count(*) FROM webhook.delivery WHERE endpoint_id = %s AND records IS NULL",
                      (endpoint_id(db, endpoint),)).fetchone()[0]


def wait_queued(db, endpoint, rows, limit_s):
    """Poll until `rows` changes are queued for the endpoint; returns time.time() when seen."""
    deadline = time.monotonic() + limit_s
    while changes_queued(db, endpoint) < rows:
        if time.monotonic() > deadline:
            raise RuntimeError(f"WAL figure: {rows} changes for {endpoint} not queued in {limit_s} s")
        time.sleep(0.02)
    return time.time()


def wait_capture_idle(db, limit_s=120):
    """WAL mode: wait until the capture worker has read the WAL to its end at some moment after
    this call (so what was committed before it is decoded); returns the seconds waited."""
    start = time.monotonic()
    since = db.execute("SELECT clock_timestamp()").fetchone()[0]
    while True:
        caught_up = db.execute("SELECT clock_timestamp() - lag_ms * interval '1 ms' > %s FROM webhook.capture_lag",
                               (since,)).fetchone()[0]
        if caught_up:
            return time.monotonic() - start
        if time.monotonic() - start > limit_s:
            raise RuntimeError(f"WAL figure: the capture worker did not catch up in {limit_s} s")
        time.sleep(0.02)


def wait_sent(db, endpoint, limit_s):
    deadline = time.monotonic() + limit_s
    while queued(db, endpoint):
        if time.monotonic() > deadline:
            raise RuntimeError(f"WAL figure: {endpoint} did not drain in {limit_s} s")
        time.sleep(0.05)


def log_size(nginx):
    try:
        return os.path.getsize(f"{nginx.dir}/access.log")
    except OSError:
        return 0


def last_receipt(db, nginx, endpoint, offset):
    """The nginx time (epoch s) of the last request for the endpoint logged after byte `offset`,
    and the number of its requests."""
    ids = {r[0] for r in db.execute("SELECT DISTINCT message_id FROM webhook.delivery WHERE endpoint_id = %s",
                                    (endpoint_id(db, endpoint),))}
    deadline = time.monotonic() + 10
    while True:
        time.sleep(0.3)  # nginx flushes its log buffer every 200 ms
        with open(f"{nginx.dir}/access.log") as f:
            f.seek(offset)
            times = [float(p[0]) for p in (line.split() for line in f) if len(p) == 2 and p[1] in ids]
        if len(times) >= len(ids) or time.monotonic() > deadline:
            return max(times), len(times)


def median_spread(values):
    med = statistics.median(values)
    return {"median": med, "min": min(values), "max": max(values),
            "spread_pct": (max(values) - min(values)) / med * 100 if med else None}


def wal_capture(nginx, seconds, rounds, changes, latency_s, bulk_rounds=5):
    """Figure 13: WAL capture against the same work in trigger mode and on unwatched tables, all
    measured in this run. Three clusters run side by side (two of them idle while the third is
    measured): `replica` (wal_level = replica, trigger mode), `logical` (wal_level = logical,
    trigger mode, no slot) and `wal` (wal_level = logical, webhook.capture = 'wal': the
    capture worker runs and its slot exists). Every endpoint points at the nginx receiver."""
    clusters = {}
    try:
        clusters["replica"] = new_cluster({"wal_level": "replica"})
        clusters["logical"] = new_cluster({"wal_level": "logical"})
        clusters["wal"] = new_cluster({"wal_level": "logical", "webhook.capture": "'wal'"})
        for c in clusters.values():
            with open(os.path.join(c.data, "postmaster.pid")) as f:
                OWN["postmasters"].append(int(f.readline()))
        dbs = {k: c.connect() for k, c in clusters.items()}
        wal, trg = dbs["wal"], dbs["logical"]
        for db in dbs.values():
            db.execute(f"CREATE TABLE t1_plain ({COLUMNS})")
        for name, db in (("wal", wal), ("trigger", trg)):
            db.execute(f"CREATE TABLE t1_watched ({COLUMNS})")
            for t in ("t2_plain", "t2_watched"):
                # No autovacuum of a 100k-row table between the two statements timed on it.
                db.execute(f"CREATE TABLE {t} ({COLUMNS}) WITH (autovacuum_enabled = off)")
            db.execute(f"CREATE TABLE t4_lat ({COLUMNS})")
            for ep, table, fmt in (("e1", "t1_watched", "rownd"), ("e2", "t2_watched", "rownd"),
                                   ("e3_rownd", "t3_rownd", "rownd"), ("e3_census", "t3_census", "census"),
                                   ("e4", "t4_lat", "rownd")):
                if ep.startswith("e3"):
                    db.execute(f"CREATE TABLE {table} ({COLUMNS})")
                db.execute("SELECT webhook.create_endpoint(%s, %s, format => %s)",
                           (ep, nginx.url(f"/wal13-{name}-{ep}"), fmt))
                db.execute("SELECT webhook.watch(%s, %s)", (table, ep))
            for ep in ("e1", "e2"):  # the write path alone, as figures 1 and 2
                db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (ep,))
        mode, slots, triggers = wal.execute(
            "SELECT current_setting('webhook.capture'), (SELECT count(*) FROM pg_replication_slots),"
            " (SELECT count(*) FROM pg_trigger WHERE tgname = 'webhook_capture')").fetchone()
        assert (mode, slots, triggers) == ("wal", 1, 0), (mode, slots, triggers)
        assert trg.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'webhook_capture'").fetchone()[0] == 5
        assert dbs["logical"].execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
        result = {"clusters": {"a": "wal_level=replica, trigger mode", "b": "wal_level=logical, trigger mode, no slot",
                               "c/d": "wal_level=logical, webhook.capture=wal: capture worker and slot"},
                  "c_note": "5 other tables of the cluster are watched (WAL path); none is written during (c)"}

        disturbed = {}
        section = {"cpu": Cpu(wal), "t": time.monotonic()}

        def section_end(name):
            """Foreign CPU during the section, as a share of the machine's (2 cores: 1.0 = both)."""
            elapsed = time.monotonic() - section["t"]
            foreign = section["cpu"].used()["foreign"]
            disturbed[name] = {"seconds": elapsed, "foreign_cpu_s": foreign,
                               "foreign_share": foreign / (elapsed * os.cpu_count())}
            section.update(cpu=Cpu(wal), t=time.monotonic())

        # 13.1 single-row INSERTs, figure 1's pgbench workload, interleaved rounds in rotated order.
        variants = {"a_replica_unwatched": ("replica", "t1_plain"), "b_logical_unwatched": ("logical", "t1_plain"),
                    "c_wal_unwatched": ("wal", "t1_plain"), "d_wal_watched": ("wal", "t1_watched")}
        runs = {v: [] for v in variants}
        discarded = {v: [] for v in variants}
        names = list(variants)

        def insert_round(v):
            cname, table = variants[v]
            db = dbs[cname]
            before = changes_queued(wal, "e1") if v == "d_wal_watched" else 0
            cpu = Cpu(db)
            began = time.monotonic()
            tps, done = pgbench_count(clusters[cname], INSERT_ONE.format(t=table), seconds)
            run = {"tps": tps, "transactions": done}
            if cname == "wal":
                # What the capture worker has left to read counts against this variant, not the next.
                start = time.monotonic()
                if v == "d_wal_watched":
                    wait_queued(wal, "e1", before + done, 300)
                wait_capture_idle(wal)
                run["capture_catch_up_s"] = time.monotonic() - start
                # Sustained rate: the transactions over pgbench's time plus the catch-up.
                run["sustained_tps"] = done / (done / tps + run["capture_catch_up_s"])
            used = cpu.used()
            run["machine_cpu_us_per_insert"] = used["machine"] / done * 1e6
            run["foreign_cpu_s"] = used["foreign"]
            run["foreign_share"] = used["foreign"] / ((time.monotonic() - began) * os.cpu_count())
            if cname == "wal":
                run["capture_worker_cpu_s"] = used["capture"]
            if v == "d_wal_watched":
                wal.execute("TRUNCATE webhook.delivery, webhook.attempt")
            return run

        for r in range(rounds):
            for v in names[r % len(names):] + names[:r % len(names)]:
                # A round during which other processes took more than a tenth of the machine
                # (a build, another benchmark) is run again, twice at most.
                for attempt in range(3):
                    run = insert_round(v)
                    if run["foreign_share"] <= 0.1 or attempt == 2:
                        break
                    discarded[v].append(run)
                runs[v].append(run)
        tps = {v: median_spread([x["tps"] for x in got]) for v, got in runs.items()}
        med = {v: s["median"] for v, s in tps.items()}
        sustained_d = statistics.median(x["sustained_tps"] for x in runs["d_wal_watched"])
        sustained_c = statistics.median(x["sustained_tps"] for x in runs["c_wal_unwatched"])
        cpu_per = {v: statistics.median(x["machine_cpu_us_per_insert"] for x in got) for v, got in runs.items()}
        result["1_insert"] = {
            "seconds": seconds, "rounds": rounds, "tps": tps, "runs": runs,
            "discarded_disturbed_runs": discarded,
            "machine_cpu_us_per_insert": cpu_per,
            "d_vs_c": med["d_wal_watched"] / med["c_wal_unwatched"],
            "d_vs_b": med["d_wal_watched"] / med["b_logical_unwatched"],
            "c_vs_b": med["c_wal_unwatched"] / med["b_logical_unwatched"],
            "b_vs_a": med["b_logical_unwatched"] / med["a_replica_unwatched"],
            "d_vs_c_per_round": [d["tps"] / c["tps"] for d, c in zip(runs["d_wal_watched"], runs["c_wal_unwatched"])],
            "sustained_d_vs_c": sustained_d / sustained_c,
            "capture_cpu_us_per_change": statistics.median(
                x["capture_worker_cpu_s"] / x["transactions"] * 1e6 for x in runs["d_wal_watched"]),
        }

        section_end("1_insert")

        # 13.2 100k-row INSERT ... SELECT and UPDATE: statement time, watched over unwatched.
        bulk_variants = {"trigger_unwatched": ("logical", "t2_plain"), "trigger_watched": ("logical", "t2_watched"),
                         "wal_unwatched": ("wal", "t2_plain"), "wal_watched": ("wal", "t2_watched")}
        bulk = {f"{s}_{v}": [] for v in bulk_variants for s in ("insert", "update")}
        wal_queue = {"insert": [], "update": []}
        names = list(bulk_variants)
        for r in range(bulk_rounds):
            for v in names[r % len(names):] + names[:r % len(names)]:
                cname, table = bulk_variants[v]
                db = dbs[cname]
                db.execute(f"TRUNCATE {table}")
                db.execute("TRUNCATE webhook.delivery, webhook.attempt")
                if cname == "wal":
                    wait_capture_idle(wal)
                for stmt, sql in (("insert", f"INSERT INTO {table} (name, email, score, amount) SELECT 'n' || g,"
                                             f" 'e@x.y', g, g FROM generate_series(1, 100000) g"),
                                  ("update", f"UPDATE {table} SET score = score + 1")):
                    took = timed(db, sql)
                    committed = time.time()
                    bulk[f"{stmt}_{v}"].append(took)
                    if v == "wal_watched":
                        seen = wait_queued(wal, "e2", 100_000 if stmt == "insert" else 200_000, 300)
                        wal_queue[stmt].append(seen - committed)
                    elif cname == "wal":
                        wait_capture_idle(wal)
        s = {k: statistics.median(v) for k, v in bulk.items()}
        result["2_bulk"] = {
            "rounds": bulk_rounds, "seconds_median": s, "seconds_rounds": bulk,
            "wal_insert_ratio": s["insert_wal_watched"] / s["insert_wal_unwatched"],
            "wal_update_ratio": s["update_wal_watched"] / s["update_wal_unwatched"],
            "trigger_insert_ratio": s["insert_trigger_watched"] / s["insert_trigger_unwatched"],
            "trigger_update_ratio": s["update_trigger_watched"] / s["update_trigger_unwatched"],
            # against the unwatched table of the cluster without a slot (trigger mode, wal_level=logical)
            "wal_insert_vs_no_slot": s["insert_wal_watched"] / s["insert_trigger_unwatched"],
            "wal_update_vs_no_slot": s["update_wal_watched"] / s["update_trigger_unwatched"],
            "wal_commit_to_all_queued_s": {k: statistics.median(v) for k, v in wal_queue.items()},
            "wal_commit_to_all_queued_rounds": wal_queue,
        }
        wal.execute("TRUNCATE webhook.delivery, webhook.attempt")
        trg.execute("TRUNCATE webhook.delivery, webhook.attempt")

        section_end("2_bulk")

        # 13.3 decode + sign + deliver throughput: `changes` rows committed in 1,000-row transactions.
        per_txn = 1000
        txns = max(1, changes // per_txn)
        n = txns * per_txn

        def commit_all(db, table):
            for _ in range(txns):
                db.execute(f"INSERT INTO {table} (name, email, score, amount) SELECT 'n' || g, 'e' || g || '@x.y',"
                           f" g, g * 1.5 FROM generate_series(1, {per_txn}) g")

        throughput = {}
        for mode, db in (("wal", wal), ("trigger", trg)):
            for fmt in ("rownd", "census"):
                ep, table = f"e3_{fmt}", f"t3_{fmt}"
                got = {}
                # (i) all at once: the receiver runs while the changes commit.
                offset = log_size(nginx)
                cpu = Cpu(db)
                t0 = time.time()
                commit_all(db, table)
                t_committed = time.time()
                t_queued = wait_queued(db, ep, n, 300)
                wait_sent(db, ep, 300)
                last, requests = last_receipt(db, nginx, ep, offset)
                used = cpu.used()
                got["end_to_end_per_s"] = n / (last - t0)
                got["end_to_end_s"] = last - t0
                got["commit_s"] = t_committed - t0
                got["all_queued_after_s"] = t_queued - t0
                got["requests"] = requests
                got["cpu_s"] = used
                db.execute("TRUNCATE webhook.delivery, webhook.attempt")
                db.execute(f"TRUNCATE {table}")
                if mode == "wal":
                    wait_capture_idle(wal)
                # (ii) decode + queue alone (endpoint disabled), then (iii) sign + deliver alone.
                db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (ep,))
                cpu = Cpu(db)
                t0 = time.time()
                commit_all(db, table)
                t_committed = time.time()
                t_queued = wait_queued(db, ep, n, 300)
                used_queue = cpu.used()
                got["queue_alone_per_s"] = n / (t_queued - t0)
                got["queue_alone_s"] = t_queued - t0
                got["queue_alone_commit_s"] = t_committed - t0
                got["queue_alone_cpu_s"] = used_queue
                if mode == "wal":
                    got["capture_cpu_us_per_change"] = used_queue["capture"] / n * 1e6
                offset = log_size(nginx)
                cpu = Cpu(db)
                t0 = time.time()
                db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (ep,))
                wait_sent(db, ep, 300)
                last, _ = last_receipt(db, nginx, ep, offset)
                got["deliver_alone_per_s"] = n / (last - t0)
                got["deliver_alone_cpu_s"] = cpu.used()
                db.execute("TRUNCATE webhook.delivery, webhook.attempt")
                db.execute(f"TRUNCATE {table}")
                if mode == "wal":
                    wait_capture_idle(wal)
                throughput[f"{mode}_{fmt}"] = got
        result["3_throughput"] = {"changes": n, "transactions": txns, **throughput}

        section_end("3_throughput")

        # 13.4 commit -> receipt latency, single-row commits at 50/s.
        commits = int(latency_s * 50)
        result["4_latency_ms"] = {"commits": commits, "wal": latency(wal, nginx, "t4_lat", commits=commits),
                                  "trigger": latency(trg, nginx, "t4_lat", commits=commits)}
        section_end("4_latency")
        result["disturbance"] = disturbed
        for db in dbs.values():
            db.close()
    finally:
        for c in clusters.values():
            c.cleanup()
        OWN["postmasters"] = []
    return result


def wal_figure(nginx, args):
    """Figure 13, timed, with a copy of its results in bench/wal-issue16.json."""
    start, load_before = time.monotonic(), os.getloadavg()
    result = wal_capture(nginx, args.wal_seconds, args.wal_rounds, args.wal_changes, args.wal_latency_seconds)
    result["figure_seconds"] = time.monotonic() - start
    result["loadavg_before"], result["loadavg_after"] = load_before, os.getloadavg()
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "wal-issue16.json"), "w") as f:
        json.dump({"13_wal": result}, f, indent=2, default=str)
    return result


def wal_table(r):
    """Figure 13 as a table."""
    one, bulk, thr, lat = r["1_insert"], r["2_bulk"], r["3_throughput"], r["4_latency_ms"]
    t = one["tps"]
    rows = [("13.1 single-row INSERT TPS, median of "
             f"{one['rounds']} x {one['seconds']} s (min-max, spread)", "", "")]
    label = {"a_replica_unwatched": "(a) unwatched, wal_level=replica",
             "b_logical_unwatched": "(b) unwatched, wal_level=logical, no slot",
             "c_wal_unwatched": "(c) unwatched, WAL mode (worker + slot)",
             "d_wal_watched": "(d) watched, WAL mode (endpoint disabled)"}
    for v, name in label.items():
        s = t[v]
        rows.append((f"  {name}", f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f}, {s['spread_pct']:.0f}%);"
                     f" {one['machine_cpu_us_per_insert'][v]:.0f} us CPU/insert", ""))
    rows += [("  d/c watched/unwatched, both WAL cluster", f"{one['d_vs_c']:.2f}x  (rounds "
              + " ".join(f"{x:.2f}" for x in one["d_vs_c_per_round"]) + ")", ">= 0.95x"),
             ("  d/c sustained (incl. capture catch-up)", f"{one['sustained_d_vs_c']:.2f}x", ""),
             ("  d/b watched WAL / unwatched logical", f"{one['d_vs_b']:.2f}x", ">= 0.95x"),
             ("  c/b slot + worker on unwatched writes", f"{one['c_vs_b']:.2f}x", ""),
             ("  b/a logical WAL by itself", f"{one['b_vs_a']:.2f}x", ""),
             ("  capture worker CPU per change (d)", f"{one['capture_cpu_us_per_change']:.1f} us", ""),
             (f"13.2 100k rows, watched / unwatched statement time, median of {bulk.get('rounds', 3)}", "", "")]
    s = bulk["seconds_median"]
    for stmt, name in (("insert", "INSERT ... SELECT"), ("update", "UPDATE")):
        for mode in ("wal", "trigger"):
            rows.append((f"  {name}, {'WAL mode' if mode == 'wal' else 'trigger mode'}",
                         f"{bulk[f'{mode}_{stmt}_ratio']:.2f}x ({s[f'{stmt}_{mode}_watched']:.2f} s /"
                         f" {s[f'{stmt}_{mode}_unwatched']:.2f} s)", "<= 1.3x" if mode == "wal" else ""))
    rows += [("  WAL watched / unwatched in the cluster without a slot (insert / update)",
              f"{bulk['wal_insert_vs_no_slot']:.2f}x / {bulk['wal_update_vs_no_slot']:.2f}x", ""),
             ("  WAL: commit -> all 100k queued (insert / update)",
              f"{bulk['wal_commit_to_all_queued_s']['insert']:.2f} s / {bulk['wal_commit_to_all_queued_s']['update']:.2f} s",
              "")]
    rows.append((f"13.3 {thr['changes']:,} changes in {thr['transactions']} commits, changes/s", "", ""))
    for key in ("wal_rownd", "wal_census", "trigger_rownd", "trigger_census"):
        g = thr[key]
        rows.append((f"  {key}: first commit -> last receipt",
                     f"{g['end_to_end_per_s']:,.0f}/s (queue alone {g['queue_alone_per_s']:,.0f}/s,"
                     f" deliver alone {g['deliver_alone_per_s']:,.0f}/s)",
                     ">= 10,000/s" if key.startswith("wal") else ""))
    for mode in ("wal", "trigger"):
        x = lat[mode]
        rows.append((f"13.4 latency at 50 commits/s, {mode} ({x['n']} commits)", f"p50 {x['p50']:.1f} ms, p99 {x['p99']:.1f} ms",
                     "<= 20 / <= 100 ms" if mode == "wal" else ""))
    d = r.get("disturbance", {})
    rows.append(("other processes' CPU (share of the machine) per section",
                 ", ".join(f"{k.split('_', 1)[0]}: {v['foreign_share'] * 100:.0f}%" for k, v in d.items())
                 + "; worst 13.1 round kept " + f"{max(x['foreign_cpu_s'] for g in one['runs'].values() for x in g):.1f}"
                 + f" CPU s, {sum(len(g) for g in one.get('discarded_disturbed_runs', {}).values())} rounds run again",
                 ""))
    w0 = max(len(a) for a, _, _ in rows)
    w1 = max(len(b) for _, b, _ in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="pgbench duration per variant and round")
    ap.add_argument("--rounds", type=int, default=5, help="pgbench rounds per variant (figure 1)")
    ap.add_argument("--drain-rows", type=int, default=100_000)
    ap.add_argument("--backlog-rows", type=int, default=1_000_000)
    ap.add_argument("--backlog-cycles", type=int, default=3, help="fill / drain / retention cycles (figure 5)")
    ap.add_argument("--burst-rows", type=int, default=50_000, help="rows per burst (figure 8)")
    ap.add_argument("--sync-rows", type=int, default=1_000_000, help="rows of the sync run (figure 11)")
    ap.add_argument("--ordering-keys", type=int, default=1000, help="distinct keys (figure 12)")
    ap.add_argument("--ordering-changes", type=int, default=20, help="changes per key (figure 12)")
    ap.add_argument("--hot-changes", type=int, default=2000, help="changes of the one hot key (figure 12)")
    ap.add_argument("--wal-seconds", type=int, default=8, help="pgbench duration per variant and round (figure 13)")
    ap.add_argument("--wal-rounds", type=int, default=5, help="pgbench rounds per variant (figure 13)")
    ap.add_argument("--wal-changes", type=int, default=30_000, help="changes of the throughput runs (figure 13)")
    ap.add_argument("--wal-latency-seconds", type=int, default=20, help="latency probe per mode (figure 13)")
    ap.add_argument("--only", choices=["statistics", "census", "filters", "sync", "ordering", "wal"],
                    help="run figure 8 alone, figure 9 with its rownd baseline (figure 3's drain), 10, 11, 12"
                         " or 13 (WAL capture, with its baselines)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    results = {}
    nginx = Nginx()
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(4096)  # accepts connections in the kernel, never answers
    try:
        if args.only == "census":
            cluster = new_cluster()
            results["9_census_drain"] = census_drain(cluster, nginx, args.drain_rows)
            cluster.cleanup()
            print(json.dumps(results, indent=2, default=str))
            return
        if args.only == "statistics":
            cluster = new_cluster()
            results["8_statistics_states"] = statistics_states(cluster, nginx, args.burst_rows)
            cluster.cleanup()
            print(json.dumps(results, indent=2, default=str))
            return
        if args.only == "sync":
            cluster = new_cluster()
            results["11_sync_run"] = sync_run(cluster, nginx, args.sync_rows)
            cluster.cleanup()
            print(json.dumps(results, indent=2, default=str))
            return
        if args.only == "ordering":
            cluster = new_cluster()
            results["12_ordering"] = ordering(cluster, nginx, args.ordering_keys, args.ordering_changes,
                                              args.hot_changes)
            cluster.cleanup()
            print(json.dumps(results, indent=2, default=str))
            return
        if args.only == "wal":
            results["13_wal"] = wal_figure(nginx, args)
            print(json.dumps(results, indent=2, default=str))
            print(wal_table(results["13_wal"]))
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=2, default=str)
            return
        if args.only == "filters":
            cluster = new_cluster()
            results["10_filters"] = filters(cluster, nginx.url("/filters"), args.seconds, args.rounds)
            cluster.cleanup()
            print(json.dumps(results, indent=2, default=str))
            return
        cluster = new_cluster()
        with cluster.connect() as db:
            for t in ("plain", "watched", "plpgsql"):
                db.execute(f"CREATE TABLE b_{t} ({COLUMNS})")
            db.execute("CREATE TABLE plpgsql_queue (id bigserial PRIMARY KEY, payload jsonb NOT NULL,"
                       " status text NOT NULL DEFAULT 'pending', created_at timestamptz NOT NULL DEFAULT now())")
            db.execute(PLPGSQL_TRIGGER)
            db.execute("CREATE TRIGGER outbox AFTER INSERT OR UPDATE OR DELETE ON b_plpgsql"
                       " FOR EACH ROW EXECUTE FUNCTION plpgsql_outbox()")
            db.execute("SELECT webhook.create_endpoint('bench', %s)", (nginx.url("/hook"),))
            db.execute("SELECT webhook.watch('b_watched', 'bench')")

            # 1. capture cost, single-row inserts (endpoint disabled: the write path alone)
            db.execute("SELECT webhook.alter_endpoint('bench', enabled => false)")
            # Rounds interleave the variants, each round in a rotated order, so that a slow spell
            # of the machine (a checkpoint, autovacuum) hits them alike; each variant's figure is
            # its median round.
            runs = {"plain": [], "watched": [], "plpgsql": []}
            variants = list(runs)
            for r in range(args.rounds):
                for t in variants[r % 3:] + variants[:r % 3]:
                    runs[t].append(pgbench(cluster, f"INSERT INTO b_{t} (name, email, score, amount)"
                                                    f" VALUES ('n', 'e@x.y', 42, 3.14);\n", args.seconds))
            tps = {t: statistics.median(got) for t, got in runs.items()}
            results["1_tps"] = tps
            results["1_tps_rounds"] = runs
            results["1_watched_vs_plain"] = tps["watched"] / tps["plain"]
            results["1_watched_vs_plpgsql"] = tps["watched"] / tps["plpgsql"]
            db.execute("TRUNCATE webhook.delivery, webhook.attempt")

            # 2. capture cost, bulk
            bulk = {}
            for t in ("plain", "watched"):
                db.execute(f"TRUNCATE b_{t}")
                bulk[f"insert_{t}"] = timed(db, f"INSERT INTO b_{t} (name, email, score, amount)"
                                                f" SELECT 'n' || g, 'e@x.y', g, g FROM generate_series(1, 100000) g")
                bulk[f"update_{t}"] = timed(db, f"UPDATE b_{t} SET score = score + 1")
            results["2_seconds"] = bulk
            results["2_insert_ratio"] = bulk["insert_watched"] / bulk["insert_plain"]
            results["2_update_ratio"] = bulk["update_watched"] / bulk["update_plain"]
            db.execute("TRUNCATE webhook.delivery, webhook.attempt")

            # 3. drain throughput
            queue(db, "b_watched", "bench", args.drain_rows)
            results["3_drain_per_s"], _ = drain(db, "bench", args.drain_rows, 600)
            db.execute("TRUNCATE webhook.delivery, webhook.attempt")

            # 4. latency at 50 commits/s
            db.execute("SELECT webhook.alter_endpoint('bench', enabled => true)")
            results["4_latency_ms"] = latency(db, nginx, "b_watched", commits=500)
            db.execute("TRUNCATE webhook.delivery, webhook.attempt")

            # 7. failing-endpoint isolation: healthy drain alone (figure 3) vs beside a blackhole
            db.execute("SELECT webhook.create_endpoint('blackhole', %s)",
                       (f"http://127.0.0.1:{blackhole.getsockname()[1]}/",))
            db.execute("CREATE TABLE b_hole (LIKE b_plain INCLUDING ALL)")
            db.execute("SELECT webhook.watch('b_hole', 'blackhole')")
            db.execute("INSERT INTO b_hole (name) SELECT 'x' FROM generate_series(1, 2000)")
            queue(db, "b_watched", "bench", args.drain_rows)
            results["7_drain_beside_timeouts_per_s"], _ = drain(db, "bench", args.drain_rows, 600)
            results["7_ratio"] = results["7_drain_beside_timeouts_per_s"] / results["3_drain_per_s"]
            db.execute("SELECT webhook.drop_endpoint('blackhole')")
            db.execute("TRUNCATE webhook.delivery, webhook.attempt")

            # 5. backlog: fill, drain, let retention empty the queue, VACUUM; several cycles, so
            # the sizes show whether space is reused or grows cycle after cycle.
            if args.backlog_rows:
                size = "SELECT pg_total_relation_size('webhook.delivery')"
                cycles = []
                for cycle in range(args.backlog_cycles):
                    queue(db, "b_watched", "bench", args.backlog_rows)
                    size_full = db.execute(size).fetchone()[0]
                    rate, rss = drain(db, "bench", args.backlog_rows, 1800, lambda: worker_rss_mb(db))
                    cluster.set("webhook.retention", "1s")
                    deadline = time.monotonic() + 600
                    while db.execute("SELECT EXISTS (SELECT 1 FROM webhook.delivery)").fetchone()[0]:
                        if time.monotonic() > deadline:
                            raise RuntimeError("retention did not empty the queue")
                        time.sleep(1)
                    cluster.reset("webhook.retention")
                    db.execute("VACUUM webhook.delivery")
                    db.execute("VACUUM webhook.attempt")
                    cycles.append({"drain_per_s": rate, "worker_rss_mb_max": rss, "queue_bytes_full": size_full,
                                   "queue_bytes_after_retention_vacuum": db.execute(size).fetchone()[0]})
                results["5_cycles"] = cycles
                results["5_backlog_drain_per_s"] = cycles[0]["drain_per_s"]
                results["5_backlog_vs_drain"] = cycles[0]["drain_per_s"] / results["3_drain_per_s"]
                results["5_worker_rss_mb_max"] = max(c["worker_rss_mb_max"] or 0 for c in cycles)
        cluster.cleanup()

        # 8. the queue's planner statistics when a burst arrives
        cluster = new_cluster()
        results["8_statistics_states"] = statistics_states(cluster, nginx, args.burst_rows)
        results["8_worst_ratio"] = min(s["ratio_to_best"] for s in results["8_statistics_states"].values())
        cluster.cleanup()

        # 9. census batches: records/s of a census endpoint (batch_size 100) beside rownd's
        cluster = new_cluster()
        results["9_census_drain"] = census_drain(cluster, nginx, args.drain_rows)
        cluster.cleanup()

        # 10. filters that send nothing, against the unwatched writes
        cluster = new_cluster()
        results["10_filters"] = filters(cluster, nginx.url("/filters"), args.seconds, args.rounds)
        cluster.cleanup()

        # 11. a sync run of a large table while live changes flow
        cluster = new_cluster()
        results["11_sync_run"] = sync_run(cluster, nginx, args.sync_rows)
        cluster.cleanup()

        # 12. ordering per key
        cluster = new_cluster()
        results["12_ordering"] = ordering(cluster, nginx, args.ordering_keys, args.ordering_changes,
                                          args.hot_changes)
        cluster.cleanup()

        # 6. two workers (duplicates are counted among this figure's own requests)
        logged_before = len(nginx.log())
        cluster = new_cluster({"webhook.workers": "2"})
        with cluster.connect() as db:
            db.execute(f"CREATE TABLE b_watched ({COLUMNS})")
            db.execute("SELECT webhook.create_endpoint('bench', %s)", (nginx.url("/hook2"),))
            db.execute("SELECT webhook.alter_endpoint('bench', enabled => false)")
            db.execute("SELECT webhook.watch('b_watched', 'bench')")
            queue(db, "b_watched", "bench", args.drain_rows)
            results["6_drain_2_workers_per_s"], _ = drain(db, "bench", args.drain_rows, 600)
            results["6_ratio_2_vs_1"] = results["6_drain_2_workers_per_s"] / results["3_drain_per_s"]
            sent = [w for _, w, *rest in (l + [""] for l in nginx.log()[logged_before:]) if w.startswith("msg_")]
        cluster.cleanup()
        results["6_duplicate_ids_2_workers"] = len(sent) - len(set(sent))

        # 13. WAL capture against its baselines (three clusters of its own)
        results["13_wal"] = wal_figure(nginx, args)
    finally:
        nginx.stop()
        blackhole.close()
    print(json.dumps(results, indent=2, default=str))
    if "13_wal" in results:
        print(wal_table(results["13_wal"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
