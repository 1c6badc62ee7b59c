"""Bad input: each call is a clear ERROR naming the bad value, and nothing queued is lost."""
import psycopg
import pytest

from conftest import endpoint, one

CASES = [
    # (SQL, args, SQLSTATE class name, text that must appear in the message)
    ("SELECT webhook.watch('bad_in', 'nope')", (), "UndefinedObject", '"nope"'),
    ("SELECT webhook.alter_endpoint('nope', enabled => false)", (), "UndefinedObject", '"nope"'),
    ("SELECT webhook.drop_endpoint('nope')", (), "UndefinedObject", '"nope"'),
    ("SELECT webhook.rotate_secret('nope')", (), "UndefinedObject", '"nope"'),
    ("SELECT * FROM webhook.test_endpoint('nope')", (), "UndefinedObject", '"nope"'),
    ("SELECT webhook.redeliver_failed('nope')", (), "UndefinedObject", '"nope"'),
    ("SELECT webhook.create_endpoint('bad_ep', 'http://127.0.0.1/')", (), "DuplicateObject", '"bad_ep"'),
    ("SELECT webhook.create_endpoint('x1', 'ftp://example.com/')", (), "InvalidParameterValue", '"ftp://example.com/"'),
    ("SELECT webhook.create_endpoint('x2', 'http://')", (), "InvalidParameterValue", '"http://"'),
    ("SELECT webhook.create_endpoint('x3', 'http://u:p@example.com/')", (), "InvalidParameterValue", "credentials"),
    ("SELECT webhook.create_endpoint('x4', 'http://exa mple.com/')", (), "InvalidParameterValue", "spaces"),
    ("SELECT webhook.create_endpoint('x5', 'http://a/', method => 'FETCH')", (), "InvalidParameterValue", '"FETCH"'),
    ("SELECT webhook.create_endpoint('x6', 'http://a/', format => 'xml')", (), "InvalidParameterValue", '"xml"'),
    ("SELECT webhook.create_endpoint('x7', 'http://a/', headers => '[1]')", (), "InvalidParameterValue", "JSON object"),
    ("SELECT webhook.create_endpoint('x8', 'http://a/', headers => %s)", ('{"X-A": "v\\r\\nInjected: 1"}',),
     "InvalidParameterValue", '"X-A"'),
    ("SELECT webhook.create_endpoint('x9', 'http://a/', headers => '{\"Bad Name\": \"v\"}')", (),
     "InvalidParameterValue", '"Bad Name"'),
    ("SELECT webhook.create_endpoint('', 'http://a/')", (), "InvalidParameterValue", "empty"),
    ("SELECT webhook.create_endpoint(NULL, 'http://a/')", (), "NullValueNotAllowed", '"name"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', events => '{truncate}')", (), "InvalidParameterValue", '"truncate"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', columns => '{nope}')", (), "UndefinedColumn", '"nope"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', rename => '{\"nope\": \"x\"}')", (), "UndefinedColumn", '"nope"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', rename => '{\"v\": \"id\"}')", (), "InvalidParameterValue", '"id"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', redact => '{nope}')", (), "UndefinedColumn", '"nope"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', lookup => '{nope}')", (), "UndefinedColumn", '"nope"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', visibility_column => 'nope')", (), "UndefinedColumn", '"nope"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', visibility_column => 'v')", (), "InvalidParameterValue", '"v"'),
    ("SELECT webhook.watch('bad_nokey', 'bad_ep')", (), "InvalidColumnReference", "bad_nokey"),
    ("SELECT webhook.watch('no_such_table', 'bad_ep')", (), "UndefinedTable", "no_such_table"),
    ("SELECT webhook.unwatch('bad_other', 'bad_ep')", (), "UndefinedObject", "bad_other"),
    ("SELECT webhook.redeliver(999999999)", (), "UndefinedObject", "999999999"),
    ("SELECT webhook.watch('bad_in', 'bad_ep', predicate => 'nope > 1')", (), "UndefinedColumn", '"nope"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', changed => '{nope}')", (), "UndefinedColumn", '"nope"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', behavior => 'upsert')", (), "InvalidParameterValue", '"upsert"'),
    # wrong types, invalid JSON, huge values, NULLs and empty values
    ("SELECT webhook.redeliver('abc')", (), "InvalidTextRepresentation", '"abc"'),
    ("SELECT webhook.create_endpoint('x10', 'http://a/', headers => '{not json')", (),
     "InvalidTextRepresentation", "json"),
    ("SELECT webhook.create_endpoint('x11', %s)", ("http://a/" + "p" * 5000,), "InvalidParameterValue", "2048"),
    ("SELECT webhook.create_endpoint(%s, 'http://a/')", ("n" * 100,), "InvalidParameterValue", "at most 63"),
    ("SELECT webhook.create_endpoint('x12', 'http://a/', headers => %s)", ('{"X-Big": "' + "v" * 5000 + '"}',),
     "InvalidParameterValue", '"X-Big"'),
    ("SELECT webhook.create_endpoint('x13', NULL)", (), "NullValueNotAllowed", '"url"'),
    ("SELECT webhook.create_endpoint('x14', 'http://a/', headers => NULL)", (), "NullValueNotAllowed", '"headers"'),
    ("SELECT webhook.create_endpoint('x15', 'http://a/', headers => '{\"X-A\": 1}')", (),
     "InvalidParameterValue", '"X-A"'),
    ("SELECT webhook.create_endpoint('x16', 'http://a/', headers => '{\"Content-Type\": \"text/plain\"}')", (),
     "InvalidParameterValue", '"Content-Type"'),
    ("SELECT webhook.create_endpoint('x17', 'http://a/', method => '')", (), "InvalidParameterValue", '""'),
    ("SELECT webhook.watch(NULL, 'bad_ep')", (), "NullValueNotAllowed", '"tbl"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', events => '{}')", (), "InvalidParameterValue", "at least one"),
    ("SELECT webhook.watch('bad_in', 'bad_ep', events => '{insert,NULL}')", (), "InvalidParameterValue", "NULL"),
    ("SELECT webhook.watch('bad_in', 'bad_ep', columns => '{}')", (), "InvalidParameterValue", "at least one"),
    ("SELECT webhook.watch('bad_in', 'bad_ep', rename => '{\"v\": 5}')", (), "InvalidParameterValue", '"v"'),
    ("SELECT webhook.watch('bad_in', 'bad_ep', name => '')", (), "InvalidParameterValue", "empty"),
    ("SELECT webhook.alter_endpoint('bad_ep', url => 'gopher://x/')", (), "InvalidParameterValue", '"gopher://x/"'),
    ("SELECT webhook.alter_endpoint('bad_ep', headers => '{\"A\": \"x\\ny\"}')", (),
     "InvalidParameterValue", '"A"'),
    ("SELECT webhook.alter_endpoint('bad_ep', format => 'csv')", (), "InvalidParameterValue", '"csv"'),
    ("SELECT webhook.redeliver(NULL)", (), "NullValueNotAllowed", '"delivery_id"'),
    ("SELECT webhook.purge('pending')", (), "InvalidParameterValue", '"pending"'),
    ("SELECT webhook.purge('failed', endpoint => 'nope')", (), "UndefinedObject", '"nope"'),
]


@pytest.fixture(scope="module")
def queued(trigger_cluster):
    """An endpoint with deliveries waiting (disabled, so they stay put) before the bad calls."""
    with trigger_cluster.connect() as db:
        db.execute("CREATE TABLE bad_in (id int PRIMARY KEY, v text)")
        db.execute("CREATE TABLE bad_nokey (a int, b text)")
        db.execute("CREATE TABLE bad_other (id int PRIMARY KEY)")
        endpoint(db, "bad_ep", "http://127.0.0.1:9/")
        db.execute("SELECT webhook.alter_endpoint('bad_ep', enabled => false)")
        db.execute("SELECT webhook.watch('bad_in', 'bad_ep')")
        db.execute("INSERT INTO bad_in SELECT g, 'v' || g FROM generate_series(1, 5) g")
        yield snapshot(db)


def snapshot(db):
    return (
        db.execute("SELECT id, status, payload::text FROM webhook.deliveries WHERE endpoint = 'bad_ep' ORDER BY id").fetchall(),
        db.execute("SELECT name, url, enabled FROM webhook.endpoints ORDER BY name").fetchall(),
        db.execute("SELECT endpoint, table_name::text, events FROM webhook.subscriptions ORDER BY 1, 2").fetchall(),
    )


@pytest.mark.parametrize("sql,args,sqlstate,needle", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_call(cluster, queued, sql, args, sqlstate, needle):
    with cluster.connect() as db:
        with pytest.raises(getattr(psycopg.errors, sqlstate)) as err:
            db.execute(sql, args)
        assert needle in str(err.value), str(err.value)
        # Nothing queued or configured by this module changed.
        deliveries, endpoints, subs = snapshot(db)
        assert len(queued[0]) == 5
        assert deliveries == queued[0]
        assert ("bad_ep", "http://127.0.0.1:9/", False) in endpoints
        assert ("bad_ep", "bad_in", ["insert", "update", "delete"]) in subs


def test_enough_cases():
    assert len(CASES) >= 30


def test_hand_made_trigger_naming_unknown_endpoint(cluster, queued):
    with cluster.connect() as db:
        db.execute("CREATE TABLE bad_hand (id int PRIMARY KEY)")
        db.execute("CREATE TRIGGER by_hand AFTER INSERT ON bad_hand FOR EACH ROW EXECUTE FUNCTION webhook.capture('ghost')")
        with pytest.raises(psycopg.errors.UndefinedObject) as err:
            db.execute("INSERT INTO bad_hand VALUES (1)")
        assert '"by_hand"' in str(err.value) and '"ghost"' in str(err.value)


def test_queue_intact_after_all_bad_calls(cluster, queued):
    """Runs after every case above: the five deliveries queued first are all still there, same ids,
    same payloads, still pending (the endpoint is disabled), and no bad call created anything."""
    with cluster.connect() as db:
        deliveries, endpoints, subs = snapshot(db)
        assert deliveries == queued[0]
        assert [status for _, status, _ in deliveries] == ["pending"] * 5
        assert [row[0] for row in deliveries] == sorted(row[0] for row in queued[0])
        assert one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = 'bad_ep'") == 5
        created = {n for (n, _, _) in endpoints} & {f"x{i}" for i in range(1, 18)}
        assert created == set() and "" not in {n for (n, _, _) in endpoints}
        assert endpoints == queued[1] and subs == queued[2]
