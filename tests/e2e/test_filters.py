"""Subscription filters (SPEC §5): `changed`, `predicate`, UPDATEs that change nothing, sync
behaviours, and the DDL guard that refuses schema changes a subscription cannot survive.

Filters act where a change is captured, so "not sent" is checked where it is decided, in the
queue, right after the statement (in WAL mode once the capture worker has read up to it,
`settle`); what is sent is checked at a real receiver with both signatures. Tests marked
both_modes run against a trigger-mode and a WAL-mode cluster."""
import json

import psycopg
import pytest

from conftest import endpoint, make_table, one, settle, watched
from harness import verify


def queued(db, name):
    """What capture queued for the endpoint, oldest first: (operation, payload)."""
    settle(db)
    return db.execute("SELECT operation, payload FROM webhook.deliveries WHERE endpoint = %s ORDER BY id",
                      (name,)).fetchall()


def received(receiver, name, count, secret):
    """The bodies that arrived, each with both signatures checked, keyed by (operation, data)."""
    got = receiver.wait_for(count, f"/ok/{name}")
    assert len(got) == count, [r.json() for r in got]
    for r in got:
        assert verify(r, secret) == (True, True)
    return sorted((r.json() for r in got), key=lambda b: json.dumps(b, sort_keys=True))


@pytest.mark.both_modes
def test_update_changing_nothing_is_never_sent(db, receiver, name):
    watched(db, receiver, name, ddl="id int PRIMARY KEY, v text, j json, n numeric")
    db.execute(f"""INSERT INTO {name} VALUES (1, 'a', '{{"x": 1}}', 1.5)""")
    db.execute(f"UPDATE {name} SET v = v, n = n")
    # A json value that differs only in whitespace has the same to_jsonb value.
    db.execute(f"""UPDATE {name} SET j = '{{ "x" :  1 }}'""")
    assert [op for op, _ in queued(db, name)] == ["data_insert"]
    db.execute(f"UPDATE {name} SET n = 2.5")
    ops = queued(db, name)
    assert [op for op, _ in ops] == ["data_insert", "data_update"]
    assert ops[1][1]["meta"]["changed_fields"] == ["n"]


@pytest.mark.both_modes
def test_changed_sends_updates_of_named_columns_only(db, receiver, name):
    secret = watched(db, receiver, name, ddl="id int PRIMARY KEY, status text, note text, hidden text[] DEFAULT '{}'",
                     changed=["status"], visibility_column="hidden")
    db.execute(f"INSERT INTO {name} VALUES (1, 'new', 'a')")
    db.execute(f"UPDATE {name} SET note = 'b'")                  # not a named column
    assert len(queued(db, name)) == 1
    db.execute(f"UPDATE {name} SET status = 'paid', note = 'c'")  # a named column changed
    db.execute(f"UPDATE {name} SET hidden = '{{note}}'")          # visibility_update: always sent
    assert [op for op, _ in queued(db, name)] == ["data_insert", "data_update", "visibility_update"]
    bodies = received(receiver, name, 3, secret)
    update = next(b for b in bodies if b["meta"]["operation"] == "data_update")
    assert update["data"] == {"id": 1, "status": "paid", "note": "c"}
    assert update["meta"]["changed_fields"] == ["status", "note"]
    visibility = next(b for b in bodies if b["meta"]["operation"] == "visibility_update")
    assert visibility["data"] == {"id": 1, "status": "paid", "note": "<<REDACTED>>"}
    assert visibility["meta"]["changed_fields"] == ["note"]


@pytest.mark.both_modes
def test_predicate_filters_and_rows_entering_or_leaving_become_insert_or_delete(db, receiver, name):
    secret = watched(db, receiver, name, ddl="id int PRIMARY KEY, status text, score int",
                     predicate="status = 'active' AND score > 10")
    db.execute(f"INSERT INTO {name} VALUES (1, 'active', 20), (2, 'idle', 20), (3, 'active', NULL)")
    assert [(op, p["data"]["id"]) for op, p in queued(db, name)] == [("data_insert", 1)]  # false, NULL: not sent
    db.execute(f"UPDATE {name} SET score = 30 WHERE id = 1")     # matched before and after: update
    db.execute(f"UPDATE {name} SET status = 'idle' WHERE id = 1")  # leaves: delete
    db.execute(f"UPDATE {name} SET status = 'active' WHERE id = 2")  # enters: insert
    db.execute(f"UPDATE {name} SET score = 5 WHERE id = 3")      # matched neither: nothing
    db.execute(f"DELETE FROM {name} WHERE id = 1")               # did not match: nothing
    db.execute(f"DELETE FROM {name} WHERE id = 2")               # matched: delete
    assert [(op, p["data"]["id"]) for op, p in queued(db, name)] == [
        ("data_insert", 1), ("data_update", 1), ("delete", 1), ("data_insert", 2), ("delete", 2)]
    bodies = received(receiver, name, 5, secret)
    deletes = [b for b in bodies if b["meta"]["operation"] == "delete"]
    assert sorted(b["data"]["id"] for b in deletes) == [1, 2]
    assert all(set(b) == {"data", "meta"} and list(b["data"]) == ["id"] for b in deletes)
    insert_2 = next(b for b in bodies if b["meta"]["operation"] == "data_insert" and b["data"]["id"] == 2)
    assert insert_2["data"] == {"id": 2, "status": "active", "score": 20}


@pytest.mark.both_modes
def test_predicate_runs_as_the_extension_owner_and_changes_with_watch(cluster, db, receiver, name):
    watched(db, receiver, name, ddl="id int PRIMARY KEY, v text")
    db.execute(f"CREATE FUNCTION public.{name}_ok(text) RETURNS boolean STABLE LANGUAGE sql AS $$ SELECT $1 <> 'skip' $$")
    db.execute(f"REVOKE ALL ON FUNCTION public.{name}_ok(text) FROM PUBLIC")
    db.execute(f"CREATE ROLE {name}_writer LOGIN")
    db.execute(f"GRANT INSERT, UPDATE ON {name} TO {name}_writer")
    # Names other than pg_catalog's must be qualified.
    with pytest.raises(psycopg.errors.UndefinedFunction):
        db.execute("SELECT webhook.watch(%s, %s, predicate => %s)", (name, name, f"{name}_ok(v)"))
    db.execute("SELECT webhook.watch(%s, %s, predicate => %s)", (name, name, f"public.{name}_ok(v)"))
    assert one(db, "SELECT predicate FROM webhook.subscriptions WHERE endpoint = %s", name) == f"public.{name}_ok(v)"
    with cluster.connect(user=f"{name}_writer") as writer:   # may not execute the function itself
        writer.execute(f"INSERT INTO {name} VALUES (1, 'keep'), (2, 'skip')")
        assert [p["data"]["id"] for _, p in queued(db, name)] == [1]
        # Watching again replaces the predicate, also in a session whose plan was cached.
        db.execute("SELECT webhook.watch(%s, %s, predicate => %s)", (name, name, "v = 'skip'"))
        writer.execute(f"INSERT INTO {name} VALUES (3, 'keep'), (4, 'skip')")
        assert [p["data"]["id"] for _, p in queued(db, name)] == [1, 4]
        db.execute("SELECT webhook.watch(%s, %s)", (name, name))
        writer.execute(f"INSERT INTO {name} VALUES (5, 'keep')")
        assert [p["data"]["id"] for _, p in queued(db, name)] == [1, 4, 5]
    db.execute(f"DROP TABLE {name}")
    db.execute(f"DROP ROLE {name}_writer")


BAD_PREDICATES = [
    ("nope > 1", "UndefinedColumn", 'column "nope" does not exist'),
    ("id + 1", "DatatypeMismatch", "must be type boolean, not type integer"),
    ("id IN (SELECT 1)", "FeatureNotSupported", "cannot use subquery in a webhook predicate"),
    ("count(*) > 1", "GroupingError", "aggregate functions are not allowed in webhook predicates"),
    ("rank() OVER () > 1", "WindowingError", "window functions are not allowed in webhook predicates"),
    ("generate_series(1, 2) > id", "FeatureNotSupported", "set-returning functions are not allowed"),
    ("random() > 0.5", "InvalidParameterValue", "calls a volatile function"),
    ("id > ", "SyntaxError", "syntax error"),
    ("true FROM pg_authid", "InvalidParameterValue", "must be a single boolean expression"),
    ("true; DROP TABLE x", "InvalidParameterValue", "must be a single boolean expression"),
    ("1/0 = 1", "DivisionByZero", "division by zero"),
]


@pytest.mark.parametrize("predicate,error,message", BAD_PREDICATES, ids=[p for p, _, _ in BAD_PREDICATES])
def test_bad_predicates_are_refused_and_change_nothing(db, receiver, name, predicate, error, message):
    watched(db, receiver, name, predicate="id > 0")
    with pytest.raises(getattr(psycopg.errors, error)) as e:
        db.execute("SELECT webhook.watch(%s, %s, predicate => %s)", (name, name, predicate))
    assert message in str(e.value) and f'predicate "{predicate}"' in str(e.value)
    assert one(db, "SELECT predicate FROM webhook.subscriptions WHERE endpoint = %s", name) == "id > 0"


@pytest.mark.both_modes
def test_behaviors(db, receiver, name):
    make_table(db, name, "id int PRIMARY KEY, v text, internal text")
    for b in ("append", "update_or_create", "mirror"):
        endpoint(db, f"{name}_{b}", receiver.url(f"/ok/{name}/{b}"))
        db.execute("SELECT webhook.watch(%s, %s, behavior => %s, columns => '{id,v}')", (name, f"{name}_{b}", b))
    assert one(db, "SELECT array_agg(behavior ORDER BY behavior) FROM webhook.subscriptions WHERE table_name = %s::regclass",
               name) == ["append", "mirror", "update_or_create"]
    db.execute(f"INSERT INTO {name} VALUES (1, 'a', 'x')")
    db.execute(f"UPDATE {name} SET internal = 'y'")   # no sent column changed
    db.execute(f"UPDATE {name} SET v = 'b'")
    db.execute(f"DELETE FROM {name}")
    ops = {b: [op for op, _ in queued(db, f"{name}_{b}")] for b in ("append", "update_or_create", "mirror")}
    assert ops == {"append": ["data_insert"], "update_or_create": ["data_insert", "data_update"],
                   "mirror": ["data_insert", "data_update", "delete"]}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="events and behavior are alternatives"):
        db.execute("SELECT webhook.watch(%s, %s, behavior => 'mirror', events => '{insert}')", (name, f"{name}_append"))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='unknown behavior "upsert"'):
        db.execute("SELECT webhook.watch(%s, %s, behavior => 'upsert')", (name, f"{name}_append"))


@pytest.mark.both_modes
def test_delete_sends_the_primary_key_while_lookup_values_carry_the_lookup(db, receiver, name):
    """Rownd's own example: a delete's data is {"user_id": ...}, lookup_values the email."""
    secret = watched(db, receiver, name, ddl="user_id uuid PRIMARY KEY, email text, hidden text[]",
                     lookup=["email"], visibility_column="hidden", rename=json.dumps({"user_id": "userId"}))
    uid = "0e223bd4-1324-49ff-b948-122eeaaa42d1"
    # The visibility column cannot hide the key.
    db.execute(f"INSERT INTO {name} VALUES (%s, 'jrose@acme.com', '{{userId,user_id,email}}')", (uid,))
    db.execute(f"DELETE FROM {name}")
    bodies = received(receiver, name, 2, secret)
    insert = next(b for b in bodies if b["meta"]["operation"] == "data_insert")
    assert insert["data"] == {"userId": uid, "email": "<<REDACTED>>"}
    delete = next(b for b in bodies if b["meta"]["operation"] == "delete")
    assert delete["data"] == {"userId": uid}
    assert delete["meta"]["lookup_values"] == [{"field": "email", "value": "jrose@acme.com"}]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cannot be redacted"):
        db.execute("SELECT webhook.watch(%s, %s, lookup => '{email}', redact => '{user_id}')", (name, name))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cannot be a lookup column"):
        db.execute("SELECT webhook.watch(%s, %s, lookup => '{hidden}', visibility_column => 'hidden')", (name, name))


GUARDED = [
    # option, watch arguments, the column it names
    ("columns", {"columns": ["id", "a"]}, "a"),
    ("rename", {"rename": json.dumps({"a": "A"})}, "a"),
    ("redact", {"redact": ["a"]}, "a"),
    ("lookup", {"lookup": ["a"]}, "a"),
    ("visibility_column", {"visibility_column": "h"}, "h"),
    ("changed", {"changed": ["a"]}, "a"),
    ("predicate", {"predicate": "a <> 'x'"}, "a"),
    ("lookup (the primary key)", {}, "id"),
]
DDL = [
    ("drop", "ALTER TABLE {t} DROP COLUMN {c}", 'cannot drop column "{c}"'),
    ("rename", "ALTER TABLE {t} RENAME COLUMN {c} TO renamed", 'cannot rename column "{c}" to "renamed"'),
    ("retype", "ALTER TABLE {t} ALTER COLUMN {c} TYPE varchar(20)", 'cannot change the type of column "{c}"'),
]


@pytest.mark.both_modes
@pytest.mark.parametrize("option,watch,column", GUARDED, ids=[g[0] for g in GUARDED])
def test_ddl_that_would_break_a_subscription_is_refused(db, receiver, name, option, watch, column):
    ddl = "id int PRIMARY KEY, a text, b text, h text[]"
    watched(db, receiver, name, ddl=ddl, **watch)
    for _, statement, message in DDL:
        if column == "h" and "TYPE" in statement:
            statement = statement.replace("varchar(20)", "varchar[]")
        with pytest.raises(psycopg.errors.DependentObjectsStillExist) as e:
            db.execute(statement.format(t=name, c=column))
        text = str(e.value)
        assert message.format(c=column) in text, text
        assert f'subscription "public.{name}" of endpoint "{name}" names it in' in text and option in text, text
    # The refused DDL changed nothing, and writes go on.
    db.execute(f"INSERT INTO {name} (id, a, b, h) VALUES (1, 'y', 'b', '{{}}')")
    assert len(queued(db, name)) == 1
    # A column no option names can go; the next change is sent without it.
    db.execute(f"ALTER TABLE {name} DROP COLUMN b")
    db.execute(f"UPDATE {name} SET a = 'z'")
    assert len(queued(db, name)) == 2
    assert "b" not in queued(db, name)[1][1]["data"]


@pytest.mark.both_modes
def test_dropping_the_primary_key_of_a_default_lookup_is_refused_and_drop_table_cleans_up(db, receiver, name):
    watched(db, receiver, name)
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match="has no primary key"):
        db.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_pkey")
    db.execute(f"INSERT INTO {name} VALUES (1, 'a')")
    db.execute(f"DROP TABLE {name}")
    assert one(db, "SELECT count(*) FROM webhook.subscriptions WHERE endpoint = %s", name) == 0
    db.execute("SELECT webhook.drop_endpoint(%s)", (name,))


def test_a_hand_attached_trigger_keeps_its_primary_key(db, receiver, name):
    """A capture() trigger attached by hand for an endpoint without a subscription sends the
    default shape, keyed by the primary key: dropping that key is refused too."""
    make_table(db, name)
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute(f"CREATE TRIGGER by_hand AFTER INSERT OR UPDATE OR DELETE ON {name}"
               f" FOR EACH ROW EXECUTE FUNCTION webhook.capture('{name}')")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist, match='would break trigger "by_hand"'):
        db.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_pkey")
    db.execute(f"INSERT INTO {name} VALUES (1, 'a')")
    assert len(queued(db, name)) == 1
    # With a subscription naming other lookup columns, the key may go.
    db.execute("SELECT webhook.watch(%s, %s, lookup => '{v}')", (name, name))
    db.execute(f"ALTER TABLE {name} DROP CONSTRAINT {name}_pkey")
    db.execute(f"DELETE FROM {name}")
    assert queued(db, name)[-1][1]["data"] == {"v": "a"}


def test_a_predicate_cannot_run_code_of_a_non_superuser_as_the_owner(cluster, db, receiver, name):
    """Predicates run as the extension owner: a delegated admin (webhook_admin, not a superuser)
    may use built-in functions, but not a function or domain it owns."""
    admin = f"{name}_admin"
    make_table(db, name, "id int PRIMARY KEY, v text")
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute(f"CREATE ROLE {admin} LOGIN IN ROLE webhook_admin")
    db.execute(f"GRANT SELECT, TRIGGER ON {name} TO {admin}")
    db.execute(f"GRANT CREATE ON SCHEMA public TO {admin}")
    with cluster.connect(user=admin) as a:
        a.execute(f"CREATE FUNCTION public.{name}_mine(text) RETURNS boolean STABLE LANGUAGE plpgsql"
                  " AS $$ BEGIN RETURN true; END $$")
        a.execute(f"CREATE DOMAIN public.{name}_dom AS text CHECK (VALUE <> '')")
        for predicate, what in ((f"public.{name}_mine(v)", f"function public.{name}_mine(text)"),
                                (f"v::public.{name}_dom IS NOT NULL", f"domain public.{name}_dom")):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                a.execute("SELECT webhook.watch(%s, %s, predicate => %s)", (name, name, predicate))
            assert what in str(e.value), str(e.value)
        a.execute("SELECT webhook.watch(%s, %s, predicate => %s)", (name, name, "upper(v) LIKE 'A%'"))
    db.execute(f"INSERT INTO {name} VALUES (1, 'abc'), (2, 'xyz')")
    assert [p["data"]["id"] for _, p in queued(db, name)] == [1]
    db.execute(f"DROP TABLE {name}")
    db.execute(f"DROP FUNCTION public.{name}_mine(text)")
    db.execute(f"DROP DOMAIN public.{name}_dom")
    db.execute(f"REVOKE CREATE ON SCHEMA public FROM {admin}")
    db.execute(f"DROP ROLE {admin}")
