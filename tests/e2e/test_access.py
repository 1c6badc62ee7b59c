"""Access control with real roles: application writers, delegated admins, and the catalog's grants."""
import psycopg
import pytest

from conftest import endpoint, make_table, one

ADMIN_CALLS = [
    "SELECT webhook.create_endpoint('x_{n}', 'http://127.0.0.1:9/')",
    "SELECT webhook.alter_endpoint('{n}', enabled => false)",
    "SELECT webhook.rotate_secret('{n}')",
    "SELECT webhook.drop_endpoint('{n}')",
    "SELECT * FROM webhook.test_endpoint('{n}')",
    "SELECT webhook.watch('{n}', '{n}')",
    "SELECT webhook.unwatch('{n}', '{n}')",
    "SELECT webhook.redeliver(1)",
    "SELECT webhook.redeliver_failed('{n}')",
    "SELECT * FROM webhook.deliveries",
    "SELECT * FROM webhook.attempts",
    "SELECT * FROM webhook.endpoint_stats",
    "SELECT * FROM webhook.endpoints",
    "SELECT secret FROM webhook.endpoint",
    "SELECT payload FROM webhook.delivery",
    "INSERT INTO webhook.delivery (id, endpoint_id, operation, payload) VALUES (-1, 1, 'x', '{{}}')",
    "UPDATE webhook.delivery SET status = 'pending'",
    "SELECT nextval('webhook.delivery_id_seq')",
]


@pytest.fixture
def app_role(db, receiver, name):
    make_table(db, name)
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"CREATE ROLE {name}_app LOGIN")
    db.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE, TRIGGER ON {name} TO {name}_app")
    return f"{name}_app"


def test_application_role_writes_but_reaches_nothing_else(cluster, receiver, name, app_role):
    with cluster.connect(user=app_role) as app:
        app.execute(f"INSERT INTO {name} VALUES (1, 'app')")
        for call in ADMIN_CALLS:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(call.format(n=name))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute(f"CREATE TRIGGER mine AFTER INSERT ON {name} FOR EACH ROW EXECUTE FUNCTION webhook.capture('{name}')")
    assert receiver.wait_for(1, f"/ok/{name}")[0].json()["data"] == {"id": 1, "v": "app"}


def test_webhook_admin_manages_without_reading_secrets(cluster, db, receiver, name):
    db.execute(f"CREATE ROLE {name}_admin LOGIN IN ROLE webhook_admin")
    make_table(db, f"{name}_mine")
    make_table(db, f"{name}_theirs")
    db.execute(f"GRANT SELECT, TRIGGER, INSERT ON {name}_mine TO {name}_admin")
    with cluster.connect(user=f"{name}_admin") as admin:
        secret = one(admin, "SELECT webhook.create_endpoint(%s, %s)", name, receiver.url(f"/ok/{name}"))
        assert secret.startswith("whsec_")
        admin.execute("SELECT webhook.watch(%s, %s)", (f"{name}_mine", name))
        admin.execute(f"INSERT INTO {name}_mine VALUES (1, 'x')")
        assert one(admin, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", name) == 1
        assert one(admin, "SELECT count(*) FROM webhook.endpoints WHERE name = %s", name) == 1
        for forbidden in ("SELECT secret FROM webhook.endpoint", "SELECT * FROM webhook.delivery"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                admin.execute(forbidden)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            admin.execute("SELECT webhook.watch(%s, %s)", (f"{name}_theirs", name))
        assert f"{name}_theirs" in str(err.value) and "TRIGGER" in str(err.value)
    receiver.wait_for(1, f"/ok/{name}")


def test_nothing_is_granted_to_public(db):
    public_grants = db.execute("""
        SELECT c.relname, a.privilege_type
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
             aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
        WHERE n.nspname = 'webhook' AND a.grantee = 0
        UNION ALL
        SELECT p.proname, a.privilege_type
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
             aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
        WHERE n.nspname = 'webhook' AND a.grantee = 0
        UNION ALL
        SELECT n.nspname, a.privilege_type
        FROM pg_namespace n, aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) a
        WHERE n.nspname = 'webhook' AND a.grantee = 0
    """).fetchall()
    assert public_grants == []
    # And the checks above are able to see a PUBLIC grant when there is one.
    db.execute("CREATE TABLE webhook_public_probe (id int)")
    db.execute("GRANT SELECT ON webhook_public_probe TO PUBLIC")
    assert one(db, """SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a
                      WHERE c.relname = 'webhook_public_probe' AND a.grantee = 0""") == 1


def test_security_definer_functions_pin_search_path(db):
    rows = db.execute("""
        SELECT p.proname, p.prosecdef, p.proconfig
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'webhook' ORDER BY 1
    """).fetchall()
    definers = [r for r in rows if r[1]]
    assert len(definers) >= 13, rows  # every function but capture()
    for proname, _, config in definers:
        assert config == ["search_path=pg_catalog, pg_temp"], (proname, config)
    assert [r[0] for r in rows if not r[1]] == ["capture"]
