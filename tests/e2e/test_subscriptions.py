"""Subscription lifecycle seen from outside: watch again, unwatch, drop_endpoint, hand-made
capture triggers, tables outside public."""
import json
import time

import psycopg
import pytest

from conftest import endpoint, in_capture_order, make_table, one
from harness import verify


def triggers(db, table):
    return db.execute(
        "SELECT tgname, encode(tgargs, 'escape') FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
        (table,)).fetchall()


def queued(db, ep):
    return one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", ep)


def test_watch_again_replaces_the_subscription(db, receiver, name):
    make_table(db, name, "id int PRIMARY KEY, v text, w text")
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    first = one(db, "SELECT webhook.watch(%s, %s, columns => '{id,v}')", name, name)
    second = one(db, "SELECT webhook.watch(%s, %s, columns => '{id,w}', rename => %s)", name, name,
                 json.dumps({"w": "W"}))
    assert first == second
    assert one(db, "SELECT count(*) FROM webhook.subscriptions WHERE endpoint = %s", name) == 1
    assert len(triggers(db, name)) == 1
    db.execute(f"INSERT INTO {name} VALUES (1, 'v', 'w')")
    assert queued(db, name) == 1  # one subscription, one delivery
    assert receiver.wait_for(1, f"/ok/{name}")[0].json()["data"] == {"id": 1, "W": "w"}


def test_unwatch_stops_capture_and_removes_the_trigger_last(db, receiver, name):
    make_table(db, name)
    endpoint(db, f"{name}_1", receiver.url(f"/ok/{name}/1"))
    endpoint(db, f"{name}_2", receiver.url(f"/ok/{name}/2"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, f"{name}_1"))
    db.execute("SELECT webhook.watch(%s, %s)", (name, f"{name}_2"))
    assert triggers(db, name) == [("webhook_capture", f"{name}_1\\000{name}_2\\000")]
    db.execute("SELECT webhook.unwatch(%s, %s)", (name, f"{name}_1"))
    assert triggers(db, name) == [("webhook_capture", f"{name}_2\\000")]
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    assert (queued(db, f"{name}_1"), queued(db, f"{name}_2")) == (0, 1)
    receiver.wait_for(1, f"/ok/{name}/2")
    db.execute("SELECT webhook.unwatch(%s, %s)", (name, f"{name}_2"))
    assert triggers(db, name) == []
    db.execute(f"INSERT INTO {name} VALUES (2, 'y')")
    assert (queued(db, f"{name}_1"), queued(db, f"{name}_2")) == (0, 1)
    time.sleep(0.5)
    assert receiver.received(f"/ok/{name}/1") == [] and len(receiver.received(f"/ok/{name}/2")) == 1


def test_drop_endpoint_removes_its_subscriptions_and_deliveries(db, receiver, name):
    make_table(db, name)
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    endpoint(db, f"{name}_keep", receiver.url(f"/ok/{name}/keep"))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute("SELECT webhook.watch(%s, %s)", (name, f"{name}_keep"))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x'), (2, 'y')")
    assert queued(db, name) == 2
    db.execute("SELECT webhook.drop_endpoint(%s)", (name,))
    assert queued(db, name) == 0
    assert one(db, "SELECT count(*) FROM webhook.endpoints WHERE name = %s", name) == 0
    assert one(db, "SELECT count(*) FROM webhook.subscriptions WHERE endpoint = %s", name) == 0
    assert triggers(db, name) == [("webhook_capture", f"{name}_keep\\000")]
    db.execute(f"INSERT INTO {name} VALUES (3, 'z')")
    assert queued(db, f"{name}_keep") == 3
    receiver.wait_for(3, f"/ok/{name}/keep")
    time.sleep(0.3)
    assert receiver.received(f"/ok/{name}") == []


def test_drop_endpoint_refuses_while_hand_made_triggers_name_it_and_force_removes_the_name(db, receiver, name):
    """A capture() trigger attached by hand that names the endpoint: drop_endpoint refuses
    (2BP01), listing each such trigger with its table, and changes nothing; force => true takes
    the name out of each (keeping the trigger's events and WHEN clause), drops a trigger left
    with no endpoint, and the table's writes go on reaching the other endpoint."""
    make_table(db, name)
    gone, keep = f"{name}_gone", f"{name}_keep"
    endpoint(db, gone, receiver.url(f"/ok/{name}/gone"))
    secret = endpoint(db, keep, receiver.url(f"/ok/{name}/keep"))
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (gone,))
    db.execute(f"CREATE TRIGGER {name}_both AFTER INSERT OR UPDATE ON {name} FOR EACH ROW"
               f" WHEN (NEW.v IS DISTINCT FROM 'skip') EXECUTE FUNCTION webhook.capture('{gone}', '{keep}')")
    db.execute(f"CREATE TRIGGER {name}_only AFTER DELETE ON {name} FOR EACH ROW"
               f" EXECUTE FUNCTION webhook.capture('{gone}')")
    db.execute(f"INSERT INTO {name} VALUES (1, 'before')")
    with pytest.raises(psycopg.errors.DependentObjectsStillExist) as e:
        db.execute("SELECT webhook.drop_endpoint(%s)", (gone,))
    message = e.value.diag.message_primary
    assert f'endpoint "{gone}"' in message
    assert f'trigger "{name}_both" on public.{name}' in message and f'trigger "{name}_only" on public.{name}' in message
    assert "force => true" in e.value.diag.message_hint
    assert one(db, "SELECT count(*) FROM webhook.endpoints WHERE name = %s", gone) == 1
    assert queued(db, gone) == 1
    assert sorted(triggers(db, name)) == [(f"{name}_both", f"{gone}\\000{keep}\\000"),
                                          (f"{name}_only", f"{gone}\\000")]

    db.execute("SELECT webhook.drop_endpoint(%s, force => true)", (gone,))
    assert triggers(db, name) == [(f"{name}_both", f"{keep}\\000")]
    assert one(db, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = %s", f"{name}_both") == (
        f"CREATE TRIGGER {name}_both AFTER INSERT OR UPDATE ON public.{name} FOR EACH ROW"
        f" WHEN ((new.v IS DISTINCT FROM 'skip'::text)) EXECUTE FUNCTION webhook.capture('{keep}')")
    assert queued(db, gone) == 0
    db.execute(f"INSERT INTO {name} VALUES (2, 'after'), (3, 'skip')")  # would fail naming a dropped endpoint
    db.execute(f"UPDATE {name} SET v = 'updated' WHERE id = 2")
    db.execute(f"DELETE FROM {name}")
    got = receiver.wait_for(3, f"/ok/{name}/keep")
    assert sorted((r.json()["meta"]["operation"], r.json()["data"]["id"]) for r in got) == [
        ("data_insert", 1), ("data_insert", 2), ("data_update", 2)]
    assert all(verify(r, secret) == (True, True) for r in got)
    assert queued(db, keep) == 3
    assert receiver.received(f"/ok/{name}/gone") == []


def test_hand_made_capture_trigger_uses_default_shape(db, receiver, name):
    make_table(db, name)
    secret = endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute(f"CREATE TRIGGER by_hand AFTER INSERT OR UPDATE OR DELETE ON {name}"
               f" FOR EACH ROW EXECUTE FUNCTION webhook.capture('{name}')")
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    db.execute(f"DELETE FROM {name}")
    got = in_capture_order(db, receiver.wait_for(2, f"/ok/{name}"))
    bodies = []
    for req in got:
        body = req.json()
        for key in ("table", "id", "occurred_at"):
            body["meta"].pop(key)
        bodies.append(body)
    lookup = [{"field": "id", "value": 1}]
    assert bodies == [
        {"data": {"id": 1, "v": "x"}, "redacted": [], "meta": {"operation": "data_insert", "lookup_values": lookup}},
        {"data": {"id": 1}, "meta": {"operation": "delete", "lookup_values": lookup}},
    ]
    assert all(verify(r, secret) == (True, True) for r in got)


def test_table_outside_public(db, receiver, name):
    db.execute(f"CREATE SCHEMA {name}_app")
    make_table(db, f"{name}_app.orders")
    endpoint(db, name, receiver.url(f"/ok/{name}"))
    db.execute("SELECT webhook.watch(%s, %s)", (f"{name}_app.orders", name))
    db.execute(f"INSERT INTO {name}_app.orders VALUES (1, 'x')")
    body = receiver.wait_for(1, f"/ok/{name}")[0].json()
    assert body["meta"]["table"] == f"{name}_app.orders"
    assert one(db, "SELECT table_name FROM webhook.deliveries WHERE endpoint = %s", name) == f"{name}_app.orders"
