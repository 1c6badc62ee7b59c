"""Health in SQL (SPEC §6): webhook.workers and endpoint_stats.oldest_due_age."""
import os
import signal

from conftest import endpoint, make_table, one, wait_until
from harness import Cluster


def workers(conn):
    return conn.execute("SELECT pid, database, started_at, last_loop_at, in_flight, last_error"
                        " FROM webhook.workers").fetchall()


def test_workers_view_shows_the_worker_and_its_successor_after_kill_9():
    c = Cluster({"webhook.workers": "2"}).start()
    try:
        with c.connect() as conn:
            conn.execute("CREATE EXTENSION webhook")
            rows = wait_until(lambda: len(workers(conn)) == 2 and workers(conn), 30, "two workers")
            actual = {r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'")}
            assert {r[0] for r in rows} == actual
            for pid, database, started_at, last_loop_at, in_flight, last_error in rows:
                assert database == "postgres"
                assert started_at <= last_loop_at
                assert in_flight == 0 and last_error is None
            # The loop runs at least once a second: last_loop_at moves.
            first = {r[0]: r[3] for r in rows}
            wait_until(lambda: all(r[3] > first[r[0]] for r in workers(conn)), 10, "last_loop_at to move")
            victim = rows[0][0]
        os.kill(victim, signal.SIGKILL)

        def replaced():
            try:
                with c.connect() as conn:
                    rows = workers(conn)
                    live = {r[0] for r in conn.execute(
                        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'")}
                    return len(rows) == 2 and victim not in {r[0] for r in rows} \
                        and {r[0] for r in rows} == live and rows
            except Exception:
                return None  # the postmaster is resetting after the crash
        rows = wait_until(replaced, 60, "the view to show the restarted workers", poll=0.3)
        assert all(r[4] == 0 for r in rows)
    finally:
        c.cleanup()


def test_workers_view_is_empty_without_preload():
    c = Cluster(preload=False).start()
    try:
        with c.connect() as conn:
            conn.execute("CREATE EXTENSION webhook")
            assert workers(conn) == []
    finally:
        c.cleanup()


def test_oldest_due_age_grows_while_disabled(db, receiver, name):
    make_table(db, name)
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    assert one(db, "SELECT oldest_due_age FROM webhook.endpoint_stats WHERE endpoint = %s", name) is None
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute(f"SELECT webhook.watch('{name}', %s)", (name,))
    db.execute(f"INSERT INTO {name} VALUES (1, 'a')")
    age = "SELECT extract(epoch FROM oldest_due_age)::float8 FROM webhook.endpoint_stats WHERE endpoint = %s"
    first = wait_until(lambda: one(db, age, name), 5, "a due delivery")
    wait_until(lambda: one(db, age, name) > first + 0.3, 5, "oldest_due_age to grow")
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    receiver.wait_for(1, f"/ok/{name}")
    wait_until(lambda: one(db, "SELECT oldest_due_age IS NULL AND pending = 0 FROM webhook.endpoint_stats"
                               " WHERE endpoint = %s", name), 10, "nothing due once delivered")


def test_last_error_is_shown_by_the_restarted_worker(receiver, name):
    """A worker ends on an ERROR (here: a trigger on webhook.attempt that fails its record
    step); PostgreSQL starts it again, and its row shows why its predecessor ended."""
    c = Cluster().start()
    try:
        with c.connect() as conn:
            conn.execute("CREATE EXTENSION webhook")
            [(first, *_)] = wait_until(lambda: workers(conn), 30, "the worker")
            make_table(conn, name)
            endpoint(conn, name, receiver.url(f"/ok/{name}"))
            conn.execute(f"SELECT webhook.watch('{name}', %s)", (name,))
            conn.execute("CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS"
                         " $$BEGIN RAISE EXCEPTION 'boom from test_health'; END$$")
            conn.execute("CREATE TRIGGER boom BEFORE INSERT ON webhook.attempt"
                         " FOR EACH ROW EXECUTE FUNCTION public.boom()")
            conn.execute(f"INSERT INTO {name} VALUES (1, 'a')")
            receiver.wait_for(1, f"/ok/{name}")

            def restarted():
                rows = workers(conn)
                return len(rows) == 1 and rows[0][0] != first and rows[0][5] and rows[0]
            row = wait_until(restarted, 30, "the restarted worker with the last error")
            assert "boom from test_health" in row[5]
            live = [r[0] for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'webhook delivery worker'")]
            assert live == [row[0]]
            conn.execute("DROP TRIGGER boom ON webhook.attempt")
    finally:
        c.cleanup()
