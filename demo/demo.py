"""webhook demo: a throwaway cluster with the worker, a receiver on 127.0.0.1, a few row changes,
and every webhook that arrives printed with both signatures verified independently.

Run as root or as any user that can runuser/become `postgres` (see tests/e2e/harness.py);
needs the extension installed (scripts/demo.sh builds and installs it first). Exits non-zero
if a webhook is missing or a signature does not verify; the cluster is removed either way."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from harness import Cluster, Receiver, verify  # noqa: E402

TTY = sys.stdout.isatty()
BOLD, GREEN, RED, DIM, END = ("\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m") if TTY else ("",) * 5
EXPECTED = 4  # insert, update, visibility update, delete
WAIT_SECONDS = 15


def step(text):
    print(f"\n{BOLD}== {text}{END}")


def sql(db, statement, *args):
    print(f"{DIM}postgres=#{END} {statement}")
    return db.execute(statement, args)


def mark(good):
    return f"{GREEN}verified{END}" if good else f"{RED}FAILED{END}"


def show_deliveries(db):
    cur = sql(db, "SELECT * FROM webhook.deliveries ORDER BY id")
    names = [c.name for c in cur.description]
    rows = cur.fetchall()
    print("  " + " | ".join(names))
    for row in rows:
        cells = []
        for name, value in zip(names, row):
            if name == "payload":
                value = json.dumps(value, separators=(",", ":"))
                value = value if len(value) <= 40 else value[:37] + "..."
            elif hasattr(value, "strftime"):
                value = value.strftime("%H:%M:%S.%f")[:-3]
            cells.append("" if value is None else str(value))
        print("  " + " | ".join(cells))
    print(f"  ({len(rows)} rows)")


def run(cluster, receiver):
    ok = True
    step(f"cluster on 127.0.0.1:{cluster.port} with shared_preload_libraries = 'webhook';"
         f" receiver on {receiver.url('/')}")
    cluster.start()
    with cluster.connect() as db:
        sql(db, "CREATE EXTENSION webhook")
        sql(db, "CREATE TABLE users (user_id int PRIMARY KEY, email text, first_name text, ssn text,"
                " hidden_fields text[] DEFAULT '{}')")
        secret = sql(db, "SELECT webhook.create_endpoint('demo', %s)", receiver.url("/hooks/users")).fetchone()[0]
        print(f"  secret (shown once): {secret}")
        sql(db, "SELECT webhook.watch('users', 'demo', rename => '{\"first_name\": \"firstName\"}',"
                " redact => '{ssn}', visibility_column => 'hidden_fields')")

        step("row changes")
        sql(db, "INSERT INTO users VALUES (1, 'jrose@acme.com', 'Juliet', '123-45-6789')")
        sql(db, "UPDATE users SET first_name = 'Jules' WHERE user_id = 1")
        sql(db, "UPDATE users SET hidden_fields = '{email}' WHERE user_id = 1")
        sql(db, "DELETE FROM users WHERE user_id = 1")

        step("webhooks received")
        deadline = time.monotonic() + WAIT_SECONDS
        while len(receiver.requests("/hooks/users")) < EXPECTED and time.monotonic() < deadline:
            time.sleep(0.05)
        got = sorted(receiver.requests("/hooks/users"), key=lambda r: int(r.headers.get("webhook-id") or 0))
        for req in got:
            x_ok, std_ok = verify(req, secret)
            ok = ok and x_ok and std_ok
            print(f"\n{BOLD}{req.method} {req.path}{END}")
            for h in ("Content-Type", "User-Agent", "webhook-id", "webhook-timestamp",
                      "webhook-signature", "X-Signature"):
                print(f"  {h}: {req.headers.get(h)}")
            try:
                pretty = json.dumps(req.json(), indent=2, ensure_ascii=False)
            except ValueError:
                pretty, ok = repr(req.body), False
                print(f"  {RED}body is not JSON{END}")
            print("  " + pretty.replace("\n", "\n  "))
            print(f"  X-Signature: {mark(x_ok)}")
            print(f"  webhook-signature (Standard Webhooks): {mark(std_ok)}")
        if len(got) != EXPECTED:
            print(f"\n{RED}expected {EXPECTED} webhooks within {WAIT_SECONDS} s, got {len(got)}{END}")
            ok = False

        step("webhook.deliveries")
        time.sleep(0.3)  # let the worker record the last outcome
        show_deliveries(db)
    return ok


def main():
    receiver = Receiver()
    cluster = None
    ok = False
    try:
        cluster = Cluster()
        ok = run(cluster, receiver)
    except Exception as e:  # report, clean up, fail
        print(f"\n{RED}demo failed: {type(e).__name__}: {e}{END}")
        if cluster is not None:
            print(f"{DIM}server log tail:{END}\n{cluster.log_tail(20)}")
    finally:
        receiver.close()
        if cluster is not None:
            cluster.cleanup()
    verdict = "all webhooks received and all signatures verified" if ok else "DEMO FAILED"
    print(f"\n{BOLD}{verdict}{END}; cluster stopped and removed.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
