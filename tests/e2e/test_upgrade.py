"""Upgrade from the released 0.1.0 to the version this tree installs (the extension's
default_version), the way users do it: ALTER EXTENSION webhook UPDATE with changes queued.

Changes captured under 0.1.0 while their endpoint is disabled are all delivered after the
upgrade, each exactly once and correctly signed; the upgraded schema is the schema a fresh
CREATE EXTENSION webhook gives (compared catalog by catalog, with a readable diff on mismatch);
and the upgraded extension does what the new version does (a dropped table takes its
subscriptions with it, DROP EXTENSION works).

The released install script is kept in tests/upgrade/ and copied into the extension directory
when it is missing there (cargo pgrx install only writes the current version's script) or is
not the released one, so this runs as root, like the rest of the suite."""
import collections
import difflib
import filecmp
import os
import shutil
import subprocess

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from conftest import one, wait_until
from harness import PG_BIN, Cluster, verify

RELEASED = ["0.1.0", "0.2.0"]   # every released version, each upgraded from in turn
UPGRADE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "upgrade")
INSERTS, UPDATES, DELETES = 300, 100, 100   # the changes queued under the old version
AFTER_UPGRADE = 10                          # inserts, then updates and deletes of as many rows
DELIVERY_DEADLINE_S = 60.0
# The two statements under test, as users type them: both go to default_version.
UPDATE_SQL = "ALTER EXTENSION webhook UPDATE"
CREATE_SQL = "CREATE EXTENSION webhook"


def extension_dir():
    pg_config = os.environ.get("PG_CONFIG", f"{PG_BIN}/pg_config")
    sharedir = subprocess.run([pg_config, "--sharedir"], check=True, capture_output=True, text=True)
    return os.path.join(sharedir.stdout.strip(), "extension")


@pytest.fixture(params=RELEASED)
def old_version(request):
    """A released version, its install script where CREATE EXTENSION ... VERSION finds it."""
    script = os.path.join(UPGRADE_DIR, f"webhook--{request.param}.sql")
    target = os.path.join(extension_dir(), os.path.basename(script))
    # Missing after a fresh setup; different only if a build of another commit was installed
    # under the released version number, which is then not what users have.
    if not os.path.exists(target) or not filecmp.cmp(script, target, shallow=False):
        shutil.copyfile(script, target)
    return request.param


@pytest.fixture
def old_cluster(old_version, request):
    """A cluster of its own: the worker delivers from database postgres, where the old version
    is installed; the server log is printed when a test of this module failed."""
    c = Cluster().start()
    failed_before = request.session.testsfailed
    try:
        yield c
    finally:
        if request.session.testsfailed > failed_before:
            print(f"server log (last 60 lines):\n{c.log_tail(60)}")
        c.cleanup()


def default_version(conn):
    return one(conn, "SELECT default_version FROM pg_available_extensions WHERE name = 'webhook'")


def extversion(conn):
    return one(conn, "SELECT extversion FROM pg_extension WHERE extname = 'webhook'")


def wait_delivered(conn, endpoint, count):
    def done():
        rows = dict(conn.execute("SELECT status, count(*) FROM webhook.deliveries WHERE endpoint = %s"
                                 " GROUP BY status", (endpoint,)).fetchall())
        assert rows.get("failed", 0) == 0, f"deliveries failed: {rows}"
        return rows == {"delivered": count}
    wait_until(done, DELIVERY_DEADLINE_S, f"{count} deliveries to {endpoint} to be delivered", poll=0.1)


# ---- the schema, described from the catalogs ------------------------------------------------
# Each query returns (key, text) rows: key orders the entries, text is one or more lines.
# Everything is named, never numbered by OID, so two databases can be compared.
CATALOG = {
    "extension": """
        SELECT 'extension', format('extension %s version %s owner %s schema %s relocatable %s',
               e.extname, e.extversion, e.extowner::regrole, e.extnamespace::regnamespace,
               e.extrelocatable)
               || coalesce(E'\n  config ' || (
                   SELECT string_agg(format('%s %L', u.cfg::regclass, u.cond), ', '
                                     ORDER BY u.cfg::regclass::text)
                   FROM unnest(e.extconfig, e.extcondition) AS u(cfg, cond)), '')
        FROM pg_extension e WHERE e.extname = 'webhook'""",
    "schema": """
        SELECT 'schema', format('schema %s owner %s acl %s', n.nspname, n.nspowner::regrole,
                                coalesce(n.nspacl::text, 'default'))
        FROM pg_namespace n WHERE n.nspname = 'webhook'""",
    "relations": """
        SELECT c.relname, format('relation %s kind %s persistence %s owner %s acl %s options %s'
                                 ' row security %s/%s',
               c.relname, c.relkind, c.relpersistence, c.relowner::regrole,
               coalesce(c.relacl::text, 'default'), c.reloptions, c.relrowsecurity, c.relforcerowsecurity)
        FROM pg_class c WHERE c.relnamespace = 'webhook'::regnamespace AND c.relkind <> 'i'""",
    "columns": """
        SELECT format('%s %s', c.relname, lpad(row_number() OVER w::text, 4, '0')),
               format('column %s.%s (position %s) %s%s%s%s%s%s%s',
               c.relname, a.attname, row_number() OVER w, format_type(a.atttypid, a.atttypmod),
               CASE WHEN a.attcollation <> 0 THEN ' COLLATE ' || a.attcollation::regcollation::text END,
               CASE WHEN a.attnotnull THEN ' NOT NULL' END,
               CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
                                  WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' END,
               CASE WHEN a.attgenerated = 's' THEN ' GENERATED ALWAYS AS ' || pg_get_expr(d.adbin, d.adrelid)
                    ELSE ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) END,
               CASE WHEN a.attacl IS NOT NULL THEN ' acl ' || a.attacl::text END,
               CASE WHEN a.attstorage <> t.typstorage THEN ' storage ' || a.attstorage::text END)
        FROM pg_class c
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'webhook'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
        WINDOW w AS (PARTITION BY c.oid ORDER BY a.attnum)""",
    "constraints": """
        SELECT format('%s %s', c.conrelid::regclass, c.conname),
               format('constraint %s on %s: %s', c.conname, c.conrelid::regclass,
                      pg_get_constraintdef(c.oid))
        FROM pg_constraint c WHERE c.connamespace = 'webhook'::regnamespace""",
    "indexes": """
        SELECT c.relname, 'index ' || pg_get_indexdef(c.oid)
        FROM pg_class c WHERE c.relnamespace = 'webhook'::regnamespace AND c.relkind = 'i'""",
    "sequences": """
        SELECT c.relname, format('sequence %s %s start %s increment %s min %s max %s cache %s cycle %s%s',
               c.relname, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
               s.seqcache, s.seqcycle,
               (SELECT format(' owned by %s.%s (%s)', d.refobjid::regclass, a.attname, d.deptype)
                FROM pg_depend d
                JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
        FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid
        WHERE c.relnamespace = 'webhook'::regnamespace""",
    "views": """
        SELECT c.relname, format(E'view %s:\n%s', c.relname, pg_get_viewdef(c.oid))
        FROM pg_class c WHERE c.relnamespace = 'webhook'::regnamespace AND c.relkind IN ('v', 'm')""",
    "functions": """
        SELECT p.oid::regprocedure::text,
               format(E'function %s owner %s acl %s:\n%s', p.oid::regprocedure, p.proowner::regrole,
                      coalesce(p.proacl::text, 'default'),
                      CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid)
                           ELSE 'kind ' || p.prokind::text END)
        FROM pg_proc p WHERE p.pronamespace = 'webhook'::regnamespace""",
    "types": """
        SELECT t.typname, format('type %s kind %s owner %s acl %s', format_type(t.oid, NULL),
                                 t.typtype, t.typowner::regrole, coalesce(t.typacl::text, 'default'))
        FROM pg_type t
        WHERE t.typnamespace = 'webhook'::regnamespace AND t.typrelid = 0 AND t.typcategory <> 'A'""",
    "triggers": """
        SELECT format('%s %s', t.tgrelid::regclass, t.tgname),
               format('trigger %s enabled %s', pg_get_triggerdef(t.oid), t.tgenabled)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'webhook'::regnamespace AND NOT t.tgisinternal""",
    "policies": """
        SELECT format('%s %s', p.polrelid::regclass, p.polname),
               format('policy %s on %s cmd %s permissive %s roles %s using %s check %s',
                      p.polname, p.polrelid::regclass, p.polcmd, p.polpermissive, p.polroles::regrole[],
                      pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid))
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
        WHERE c.relnamespace = 'webhook'::regnamespace""",
    "event triggers": """
        SELECT e.evtname, format('event trigger %s on %s enabled %s tags %s function %s owner %s',
               e.evtname, e.evtevent, e.evtenabled, e.evttags, e.evtfoid::regprocedure, e.evtowner::regrole)
        FROM pg_event_trigger e""",
    "initial privileges": """
        SELECT pg_describe_object(i.classoid, i.objoid, i.objsubid),
               format('initial privileges of %s: %s', pg_describe_object(i.classoid, i.objoid, i.objsubid),
                      i.initprivs)
        FROM pg_init_privs i WHERE i.privtype = 'e'""",
    "members": """
        SELECT pg_describe_object(d.classid, d.objid, d.objsubid),
               'member ' || pg_describe_object(d.classid, d.objid, d.objsubid)
        FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
        WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'webhook'""",
    "comments": """
        SELECT pg_describe_object(ds.classoid, ds.objoid, ds.objsubid),
               format('comment on %s: %s', pg_describe_object(ds.classoid, ds.objoid, ds.objsubid),
                      ds.description)
        FROM pg_description ds
        WHERE (ds.classoid, ds.objoid) IN (
            SELECT d.classid, d.objid FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
            WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'webhook'
            UNION ALL SELECT 'pg_extension'::regclass, e.oid FROM pg_extension e WHERE e.extname = 'webhook')""",
}


def describe(conn):
    """The extension's schema as lines: section by section, entries sorted, each entry's
    lines as the catalog functions print them with trailing whitespace removed."""
    conn.execute("SET search_path = pg_catalog")  # every name in the output is qualified alike
    lines = []
    for section, sql in CATALOG.items():
        lines.append(f"== {section}")
        for _, text in sorted(conn.execute(sql).fetchall()):
            lines.extend(line.rstrip() for line in text.rstrip("\n").split("\n"))
    conn.execute("RESET search_path")
    return lines


# ---- the test -------------------------------------------------------------------------------

def test_upgrade_keeps_the_queue_and_gives_the_fresh_schema(old_version, old_cluster, receiver):
    OLD_VERSION = old_version
    path = f"/ok/upgrade/{OLD_VERSION}"
    with old_cluster.connect() as db:
        new_version = default_version(db)
        assert new_version != OLD_VERSION, (
            f"the installed webhook's default_version is still {OLD_VERSION}: install the new "
            "version first (cargo pgrx install)")

        # The released version, with changes queued for a disabled endpoint.
        db.execute(f"CREATE EXTENSION webhook VERSION '{OLD_VERSION}'")
        assert extversion(db) == OLD_VERSION
        secret = one(db, "SELECT webhook.create_endpoint('upgrade', %s)", receiver.url(path))
        # Rotated under the old version: its one previous secret is carried over and keeps signing.
        rotated = one(db, "SELECT webhook.rotate_secret('upgrade')")
        assert rotated != secret
        # test_endpoint reads what the upgrade adds: until then it says what to do.
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="ALTER EXTENSION webhook UPDATE"):
            db.execute("SELECT * FROM webhook.test_endpoint('upgrade')")
        db.execute("SELECT webhook.alter_endpoint('upgrade', enabled => false)")
        # redeliver_failed's old definition runs on the new library (its 0.2.0 symbol).
        assert one(db, "SELECT webhook.redeliver_failed('upgrade')") == 0
        db.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        db.execute("SELECT webhook.watch('items', 'upgrade')")
        for start in range(1, INSERTS + 1, 100):   # a few transactions of 100 inserts
            db.execute("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(%s::int, %s::int) g",
                       (start, min(start + 99, INSERTS)))
        db.execute("UPDATE items SET v = 'updated ' || id WHERE id <= %s", (UPDATES,))
        db.execute("DELETE FROM items WHERE id > %s", (INSERTS - DELETES,))
        queued = dict(db.execute("SELECT operation, count(*) FROM webhook.deliveries WHERE endpoint = 'upgrade'"
                                 " AND status = 'pending' GROUP BY operation").fetchall())
        assert queued == {"data_insert": INSERTS, "data_update": UPDATES, "delete": DELETES}

        # 0.1.0 leaves a dropped table's subscription behind; the upgrade removes it.
        db.execute("SELECT webhook.create_endpoint('stale', 'http://127.0.0.1:9/stale')")
        db.execute("SELECT webhook.alter_endpoint('stale', enabled => false)")
        db.execute("CREATE TABLE dropped_before (id int PRIMARY KEY)")
        db.execute("SELECT webhook.watch('dropped_before', 'stale')")
        db.execute("DROP TABLE dropped_before")
        assert one(db, "SELECT count(*) FROM webhook.subscription s JOIN webhook.endpoint e"
                       " ON e.id = s.endpoint_id WHERE e.name = 'stale'") == (1 if OLD_VERSION == "0.1.0" else 0)
        # The new options need the new schema; until the update they are refused, clearly.
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="ALTER EXTENSION webhook UPDATE"):
            db.execute("SELECT webhook.watch('items', 'upgrade', predicate => 'id > 0')")

        assert receiver.received(path) == []  # disabled: nothing sent yet
        # The worker, built for the new schema, waits for the update and says so.
        wait_until(lambda: f"schema in this database is version {OLD_VERSION}" in old_cluster.log_text(),
                   timeout=15, what="the worker's warning about the old schema")

        db.execute(UPDATE_SQL)
        assert extversion(db) == new_version

        # The same session keeps capturing after the upgrade.
        after = range(INSERTS + 1, INSERTS + AFTER_UPGRADE + 1)
        db.execute("INSERT INTO items SELECT g, 'after ' || g FROM generate_series(%s::int, %s::int) g",
                   (after.start, after.stop - 1))
        db.execute("UPDATE items SET v = v || '!' WHERE id >= %s", (after.start,))
        db.execute("DELETE FROM items WHERE id >= %s", (after.start,))
        total = INSERTS + UPDATES + DELETES + 3 * AFTER_UPGRADE
        # Changes queued before the upgrade keep their delivery id as webhook-id (and meta.id);
        # those captured after it get a message id.
        expected = dict(db.execute("SELECT d.message_id, d.payload FROM webhook.delivery d"
                                   " JOIN webhook.endpoint e ON e.id = d.endpoint_id"
                                   " WHERE e.name = 'upgrade'").fetchall())
        assert len(expected) == total
        kept = one(db, "SELECT count(*) FROM webhook.delivery WHERE message_id = id::text")
        assert kept == INSERTS + UPDATES + DELETES
        assert all(i.startswith("msg_") for i in expected if not i.isdigit())

        db.execute("SELECT webhook.alter_endpoint('upgrade', enabled => true)")
        wait_delivered(db, "upgrade", total)
        # A delivery is marked delivered only after its response, so every request is in.
        requests = receiver.received(path)
        counts = collections.Counter(r.headers["webhook-id"] for r in requests)
        repeated = {i: n for i, n in counts.items() if n > 1}
        assert not repeated, f"received more than once: {repeated}"
        assert set(counts) == set(expected), (
            f"lost: {sorted(set(expected) - set(counts))[:20]}, "
            f"unknown: {sorted(set(counts) - set(expected))[:20]}")
        for r in requests:
            assert r.body.decode() == expected[r.headers["webhook-id"]]
            assert verify(r, rotated) == (True, True), r.headers["webhook-id"]
            Webhook(secret).verify(r.body, r.headers)
            assert len(r.headers["webhook-signature"].split(" ")) == 2
        assert one(db, "SELECT rotation_overlap FROM webhook.endpoints WHERE name = 'upgrade'") is True

        # What the new version does, in the upgraded database.
        assert one(db, "SELECT name FROM webhook.subscriptions WHERE endpoint = 'upgrade'") == "public.items"
        assert one(db, "SELECT count(*) FROM webhook.subscriptions WHERE endpoint = 'stale'") == 0
        db.execute("SELECT webhook.drop_endpoint('stale')")
        db.execute("CREATE ROLE upgrade_app LOGIN")
        db.execute("GRANT CREATE ON SCHEMA public TO upgrade_app")
        with old_cluster.connect(user="upgrade_app") as app:
            app.execute("CREATE TABLE app_items (id int PRIMARY KEY)")
        db.execute("SELECT webhook.watch('app_items', 'upgrade')")
        with old_cluster.connect(user="upgrade_app") as app:  # no rights on schema webhook
            app.execute("DROP TABLE app_items")
        assert one(db, "SELECT count(*) FROM webhook.subscription") == 1  # items' only
        # Subscriptions made before the upgrade are guarded like new ones.
        with pytest.raises(psycopg.errors.DependentObjectsStillExist, match='cannot drop column "id"'):
            db.execute("ALTER TABLE items DROP COLUMN id")
        db.execute("SELECT webhook.watch('items', 'upgrade', predicate => 'id > 0', changed => '{v}')")
        db.execute("SELECT webhook.drop_endpoint('upgrade')")  # it watched app_items, now dropped

        # The upgraded schema is the fresh install's.
        db.execute("CREATE DATABASE fresh")
        fresh_dsn = old_cluster.dsn().replace("dbname=postgres", "dbname=fresh")
        with psycopg.connect(fresh_dsn, autocommit=True) as fresh:
            fresh.execute(CREATE_SQL)
            assert extversion(fresh) == new_version
            upgraded_schema, fresh_schema = describe(db), describe(fresh)
            fresh.execute("DROP EXTENSION webhook")
            assert one(fresh, "SELECT count(*) FROM pg_event_trigger") == 0
        assert any(line.startswith("member ") for line in fresh_schema), fresh_schema
        diff = "\n".join(difflib.unified_diff(upgraded_schema, fresh_schema, lineterm="",
                                              fromfile=f"upgraded from {OLD_VERSION}",
                                              tofile=f"fresh install of {new_version}"))
        if upgraded_schema != fresh_schema:
            pytest.fail(f"the upgraded schema differs from a fresh install:\n{diff}", pytrace=False)

        # And the upgraded extension can be dropped (its event trigger with it).
        db.execute("DROP TABLE items")
        db.execute("DROP EXTENSION webhook")
        assert one(db, "SELECT count(*) FROM pg_event_trigger") == 0
