"""webhook demo: a throwaway cluster with the worker, a receiver on 127.0.0.1, a few row changes,
and every webhook that arrives printed with both signatures verified independently."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
from harness import Cluster, Receiver, verify  # noqa: E402

BOLD, GREEN, RED, DIM, END = "\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m"


def step(text):
    print(f"\n{BOLD}== {text}{END}")


def sql(db, statement, *args):
    print(f"{DIM}postgres=#{END} {statement}")
    return db.execute(statement, args)


def main():
    cluster = Cluster().start()
    receiver = Receiver()
    ok = True
    try:
        step(f"cluster on 127.0.0.1:{cluster.port} with shared_preload_libraries = 'webhook'; receiver on {receiver.url('/')}")
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
            got = sorted(receiver.wait_for(4, "/hooks/users", timeout=15),
                         key=lambda r: int(r.headers["webhook-id"]))
            for req in got:
                x_ok, std_ok = verify(req, secret)
                ok = ok and x_ok and std_ok
                mark = lambda good: f"{GREEN}verified{END}" if good else f"{RED}FAILED{END}"  # noqa: E731
                print(f"\n{BOLD}{req.method} {req.path}{END}")
                for h in ("content-type", "user-agent", "webhook-id", "webhook-timestamp",
                          "webhook-signature", "x-signature"):
                    print(f"  {h}: {req.headers.get(h)}")
                print("  " + json.dumps(req.json(), indent=2).replace("\n", "\n  "))
                print(f"  X-Signature (HMAC-SHA256, Python hmac): {mark(x_ok)}")
                print(f"  webhook-signature (PyPI standardwebhooks): {mark(std_ok)}")

            step("webhook.deliveries")
            time.sleep(0.3)
            for row in sql(db, "SELECT id, operation, status, attempts, last_status_code FROM webhook.deliveries"
                               " ORDER BY id").fetchall():
                print("  ", row)
    finally:
        receiver.close()
        cluster.cleanup()
    print(f"\n{BOLD}{'all signatures verified' if ok else 'SIGNATURE CHECK FAILED'}{END}; cluster removed.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
