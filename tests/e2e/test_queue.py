"""The capture trigger writes webhook.delivery without the executor (src/enqueue.rs): its heap
and index inserts must leave every index complete, keep up with indexes added later, and refuse
loudly a queue table it cannot write correctly."""
import psycopg
import pytest

from conftest import endpoint, make_table, one

INDEXES = ("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
           " WHERE i.indrelid = 'webhook.delivery'::regclass ORDER BY 1")


def check_indexes(db):
    """amcheck: every index is well formed and holds every heap row it should (its predicate
    applied); returns the index names checked."""
    names = [r[0] for r in db.execute(INDEXES)]
    for index in names:
        db.execute("SELECT bt_index_check(%s::regclass, heapallindexed => true)", (f"webhook.{index}",))
    return names


def capture_some(db, name):
    make_table(db, name, "id int PRIMARY KEY, v text")
    endpoint(db, name, "http://127.0.0.1:9/unused")
    # Ordered: its deliveries carry key hashes (delivery_order), checked by amcheck too.
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false, ordering => 'key')", (name,))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} SELECT g, 'v' || g FROM generate_series(1, 300) g")
    db.execute(f"UPDATE {name} SET v = v || '!' WHERE id % 3 = 0")
    with db.transaction():
        db.execute(f"DELETE FROM {name} WHERE id > 250")
    return one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", name)


def test_capture_leaves_every_queue_index_complete(db, name):
    db.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    assert capture_some(db, name) == 300 + 100 + 50
    assert check_indexes(db) == ["delivery_batch", "delivery_delivered", "delivery_due", "delivery_order",
                                   "delivery_pkey"]
    # The due index, read alone, finds exactly the pending rows.
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        db.execute("SET LOCAL enable_bitmapscan = off")
        via_index = one(db, "SELECT count(*) FROM webhook.delivery d JOIN webhook.endpoint e ON e.id = d.endpoint_id"
                            " WHERE e.name = %s AND d.status IN ('pending', 'delivering')", name)
    assert via_index == 450
    # So does the ordering index, by key (every change was keyed).
    with db.transaction():
        db.execute("SET LOCAL enable_seqscan = off")
        db.execute("SET LOCAL enable_bitmapscan = off")
        keyed = one(db, "SELECT count(*) FROM webhook.delivery d WHERE d.subscription_id ="
                        " (SELECT s.id FROM webhook.subscriptions s WHERE s.endpoint = %s)"
                        " AND d.order_key IS NOT NULL AND octet_length(d.status) > 0", name)
    assert keyed == 450


def test_an_index_added_to_the_queue_is_maintained(db, name):
    db.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
    assert capture_some(db, name) == 450  # this session's capture caches are now warm
    db.execute("CREATE INDEX delivery_by_table ON webhook.delivery (table_name, id)")
    try:
        db.execute(f"INSERT INTO {name} SELECT g, 'later' FROM generate_series(1000, 1099) g")
        assert "delivery_by_table" in check_indexes(db)
        with db.transaction():
            db.execute("SET LOCAL enable_seqscan = off")
            assert one(db, "SELECT count(*) FROM webhook.delivery WHERE table_name = %s",
                       f"public.{name}") == 550
    finally:
        db.execute("DROP INDEX webhook.delivery_by_table")


def test_a_queue_index_capture_cannot_maintain_is_refused(db, name):
    make_table(db, name)
    endpoint(db, name, "http://127.0.0.1:9/unused")
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute("CREATE INDEX delivery_lower ON webhook.delivery (lower(table_name))")
    try:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
            db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
        assert '"delivery_lower"' in str(err.value) and "expression" in str(err.value)
    finally:
        db.execute("DROP INDEX webhook.delivery_lower")
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    assert one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", name) == 1


def test_large_payloads_are_toasted_and_sent_whole(db, receiver, name):
    """Payloads past the TOAST threshold go through heap_insert's own toasting: compressible
    (1 MB of one letter) and incompressible (about 256 KB of hex) alike arrive byte for byte."""
    make_table(db, name, "id int PRIMARY KEY, v text")
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} VALUES (1, repeat('x', 1000000))")
    db.execute(f"INSERT INTO {name} SELECT 2, string_agg(md5(g::text), '') FROM generate_series(1, 8000) g")
    expected = dict(db.execute(f"SELECT id, v FROM {name}").fetchall())
    got = {r.json()["data"]["id"]: r.json()["data"]["v"] for r in receiver.wait_for(2, f"/ok/{name}")}
    assert got == expected and len(got[2]) == 256000
    stored = one(db, "SELECT pg_column_size(payload) < octet_length(payload) FROM webhook.delivery"
                     " WHERE strpos(payload, 'xxxx') > 0")
    assert stored  # compressed in place or out of line


@pytest.mark.parametrize("kind, ddl, undo, named", [
    ("trigger",
     "CREATE FUNCTION webhook.t_queue_audit() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;"
     " CREATE TRIGGER queue_audit BEFORE INSERT ON webhook.delivery FOR EACH ROW EXECUTE FUNCTION webhook.t_queue_audit()",
     "DROP TRIGGER queue_audit ON webhook.delivery; DROP FUNCTION webhook.t_queue_audit()",
     '"queue_audit"'),
    ("check",
     "ALTER TABLE webhook.delivery ADD CONSTRAINT payload_json CHECK (payload LIKE '{%')",
     "ALTER TABLE webhook.delivery DROP CONSTRAINT payload_json",
     '"payload_json"'),
    ("rule",
     "CREATE RULE queue_copy AS ON INSERT TO webhook.delivery DO ALSO NOTIFY queue_copy",
     "DROP RULE queue_copy ON webhook.delivery",
     "rule"),
])
def test_a_queue_table_that_gained_user_code_is_refused_not_bypassed(db, receiver, name, kind, ddl, undo, named):
    """Capture writes the queue without the executor, so a trigger, a rule or a CHECK constraint
    added to webhook.delivery would silently not run: capture refuses with an error naming it,
    in sessions whose capture caches were already warm, and works again once it is gone."""
    make_table(db, name, "id int PRIMARY KEY, v text")
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")  # warm this session's caches
    db.execute(ddl)
    try:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as err:
            db.execute(f"INSERT INTO {name} VALUES (2, 'x')")
        assert named in str(err.value) and "bypass" in str(err.value), str(err.value)
    finally:
        db.execute(undo)
    db.execute(f"INSERT INTO {name} VALUES (3, 'x')")
    assert one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", name) == 2
