"""End to end: real cluster with the worker, real receiver on 127.0.0.1, independent verifiers."""
import base64
import datetime
import hashlib
import hmac
import json
import os
import re
import socket
import subprocess
import time

import psycopg
import psycopg.sql
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conftest import (RETRY_DELAYS, RETRY_DELAYS_MS, WAKE_DEADLINE_S, assert_retry_gaps, endpoint,
                      in_capture_order, make_table, message_id, one, settle, wait_status, wait_until, wait_worker_idle,
                      watched)
from harness import Request, verify


def delivery_ids(db, name):
    return [r[0] for r in db.execute("SELECT id FROM webhook.deliveries WHERE endpoint = %s ORDER BY id", (name,))]


def strip_meta(req, table):
    """The body with meta.table, meta.id and meta.occurred_at checked and removed."""
    body = req.json()
    meta = body["meta"]
    assert meta.pop("table") == f"public.{table}"
    assert meta.pop("id") == req.headers["webhook-id"]
    occurred = datetime.datetime.fromisoformat(meta.pop("occurred_at").replace("Z", "+00:00"))
    assert occurred.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - occurred).total_seconds()) < 60
    return body


@pytest.mark.both_modes
def test_payloads_for_insert_update_delete_and_visibility(db, receiver, name):
    secret = watched(
        db, receiver, name,
        ddl="user_id uuid PRIMARY KEY, email text, first_name text, ssn text, hidden text[] DEFAULT '{}'",
        rename=json.dumps({"first_name": "firstName"}), redact=["ssn"], visibility_column="hidden",
    )
    uid = "0e223bd4-1324-49ff-b948-122eeaaa42d1"
    db.execute(f"INSERT INTO {name} VALUES (%s, 'jrose@acme.com', 'Juliet', '123', '{{}}')", (uid,))
    db.execute(f"UPDATE {name} SET first_name = 'Jules'")
    db.execute(f"UPDATE {name} SET hidden = '{{email}}'")
    db.execute(f"UPDATE {name} SET hidden = '{{}}', first_name = 'J'")  # data changed too: data_update
    db.execute(f"DELETE FROM {name}")
    got = in_capture_order(db, receiver.wait_for(5, f"/ok/{name}"))
    bodies = [r.json() for r in got]
    ids = delivery_ids(db, name)
    lookup = [{"field": "user_id", "value": uid}]
    metas = []
    for body, req, did in zip(bodies, got, ids):
        meta = body["meta"]
        assert meta.pop("table") == f"public.{name}"
        assert meta.pop("id") == req.headers["webhook-id"] == message_id(db, did)
        occurred = datetime.datetime.fromisoformat(meta.pop("occurred_at").replace("Z", "+00:00"))
        assert abs((datetime.datetime.now(datetime.timezone.utc) - occurred).total_seconds()) < 60
        metas.append(meta)
        assert verify(req, secret) == (True, True)
    assert bodies[0] == {
        "data": {"user_id": uid, "email": "jrose@acme.com", "firstName": "Juliet", "ssn": "<<REDACTED>>"},
        "redacted": ["ssn"],
        "meta": {"operation": "data_insert", "lookup_values": lookup},
    }
    assert bodies[1] == {
        "data": {"user_id": uid, "email": "jrose@acme.com", "firstName": "Jules", "ssn": "<<REDACTED>>"},
        "redacted": ["ssn"],
        "meta": {"operation": "data_update", "lookup_values": lookup, "changed_fields": ["firstName"]},
    }
    assert bodies[2] == {
        "data": {"user_id": uid, "email": "<<REDACTED>>", "firstName": "Jules", "ssn": "<<REDACTED>>"},
        "redacted": ["email", "ssn"],
        "meta": {"operation": "visibility_update", "lookup_values": lookup, "changed_fields": ["email"]},
    }
    assert bodies[3] == {
        "data": {"user_id": uid, "email": "jrose@acme.com", "firstName": "J", "ssn": "<<REDACTED>>"},
        "redacted": ["ssn"],
        "meta": {"operation": "data_update", "lookup_values": lookup,
                 "changed_fields": ["email", "firstName"]},
    }
    assert bodies[4] == {"data": {"user_id": uid}, "meta": {"operation": "delete", "lookup_values": lookup}}
    assert [r[0] for r in db.execute("SELECT operation FROM webhook.deliveries WHERE endpoint = %s ORDER BY id",
                                     (name,))] == ["data_insert", "data_update", "visibility_update",
                                                   "data_update", "delete"]


@pytest.mark.both_modes
def test_composite_key_with_renamed_key_column(db, receiver, name):
    """Lookup values follow the primary key's column order and use the payload's field names;
    a delete's data is exactly the key fields."""
    watched(db, receiver, name, ddl="org int, uid int, email text, PRIMARY KEY (org, uid)",
            rename=json.dumps({"uid": "userId"}))
    db.execute(f"INSERT INTO {name} VALUES (7, 42, 'a@b.c')")
    db.execute(f"DELETE FROM {name}")
    ins, dele = [strip_meta(r, name) for r in in_capture_order(db, receiver.wait_for(2, f"/ok/{name}"))]
    lookup = [{"field": "org", "value": 7}, {"field": "userId", "value": 42}]
    assert ins == {"data": {"org": 7, "userId": 42, "email": "a@b.c"}, "redacted": [],
                   "meta": {"operation": "data_insert", "lookup_values": lookup}}
    assert dele == {"data": {"org": 7, "userId": 42}, "meta": {"operation": "delete", "lookup_values": lookup}}


@pytest.mark.both_modes
def test_columns_and_custom_lookup(db, receiver, name):
    watched(db, receiver, name, ddl="id int PRIMARY KEY, email text, note text",
            columns=["email"], lookup=["email"], events=["insert"])
    db.execute(f"INSERT INTO {name} VALUES (1, 'a@b.c', 'secret note')")
    db.execute(f"UPDATE {name} SET note = 'x'")  # not subscribed
    db.execute(f"DELETE FROM {name}")  # not subscribed
    settle(db)
    # The unsubscribed events queued nothing.
    assert one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", name) == 1
    body = strip_meta(receiver.wait_for(1, f"/ok/{name}")[0], name)
    assert body == {"data": {"email": "a@b.c"}, "redacted": [],
                    "meta": {"operation": "data_insert", "lookup_values": [{"field": "email", "value": "a@b.c"}]}}
    time.sleep(0.5)
    assert len(receiver.received(f"/ok/{name}")) == 1


@pytest.mark.both_modes
def test_values_follow_to_jsonb(db, receiver, name):
    db.execute(f"CREATE TYPE {name}_mood AS ENUM ('happy', 'sad')")
    db.execute(f"CREATE TYPE {name}_pair AS (a int, b text)")
    db.execute(f"CREATE DOMAIN {name}_pos AS int CHECK (VALUE > 0)")
    ddl = (f"id bigint PRIMARY KEY, nothing text, n numeric, big bigint, flag bool, t text, ts timestamptz,"
           f" d date, u uuid, ints int[], texts text[], j json, jb jsonb, bin bytea, mood {name}_mood,"
           f" pair {name}_pair, pos {name}_pos, f float8")
    watched(db, receiver, name, ddl=ddl)
    db.execute(
        f"INSERT INTO {name} VALUES (9007199254740993, NULL, 12345678901234567890.123456789, -42, true,"
        f" 'Ünïcødé \"quoted\" \\ back', '2021-08-31 23:03:29.5+02', '2021-08-31',"
        f" '0e223bd4-1324-49ff-b948-122eeaaa42d1', '{{1,2,NULL}}', '{{\"a b\",c}}', '{{\"k\": [1, 2.5],  \"k\" : 3}}',"
        f" '{{\"x\": {{\"y\": null}}}}', '\\x00ff', 'sad', ROW(1, 'p'), 7, 1.5e300)"
    )
    # Edge values: non-finite numbers and times, empty arrays, control characters, empty text.
    db.execute(
        f"INSERT INTO {name} VALUES (2, '', 'NaN', 0, false, E'tab\\t nl\\n nul-free \\u0001 \\u2028 emoji \\U0001F600',"
        f" 'infinity', '-infinity', NULL, '{{}}', '{{NULL,\"\"}}', 'null', '[]', '', 'happy', ROW(NULL, NULL),"
        f" 1, 'Infinity')"
    )
    first, second = in_capture_order(db, receiver.wait_for(2, f"/ok/{name}"))
    assert b"12345678901234567890.123456789" in first.body
    assert b"9007199254740993" in first.body
    # Exact text of every number, and objects as the key/value pairs written, in order: a json
    # value's duplicate key (which to_jsonb drops) or a float written as float8out writes it
    # (1.5e+300, where to_jsonb writes every digit) would differ.
    def pairs(text):
        return json.loads(text, object_pairs_hook=list, parse_float=str, parse_int=str)
    for req, key in ((first, 9007199254740993), (second, 2)):
        data = dict(dict(pairs(req.body))["data"])
        oracle = one(db, f"SELECT to_jsonb(r)::text FROM {name} r WHERE id = %s", key)
        expected = dict(pairs(oracle))
        assert data == expected
        assert len(expected) == 18  # every column, none lost on either side
    assert dict(dict(pairs(first.body))["data"])["j"] == [("k", "3")]


@pytest.mark.both_modes
def test_generated_columns_are_sent(db, receiver, name):
    """A stored generated column is a column of the row like any other: sent in inserts and
    updates (its change in changed_fields), as to_jsonb shows it. (PostgreSQL 15's pgoutput leaves
    generated columns out of the WAL stream.)"""
    watched(db, receiver, name, ddl="id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED")
    db.execute(f"INSERT INTO {name} (id, a) VALUES (1, 21)")
    inserted = one(db, f"SELECT to_jsonb(r) FROM {name} r")
    db.execute(f"UPDATE {name} SET a = 5")
    updated = one(db, f"SELECT to_jsonb(r) FROM {name} r")
    db.execute(f"DELETE FROM {name}")
    bodies = [strip_meta(r, name) for r in in_capture_order(db, receiver.wait_for(3, f"/ok/{name}"))]
    lookup = [{"field": "id", "value": 1}]
    assert (inserted, updated) == ({"id": 1, "a": 21, "twice": 42}, {"id": 1, "a": 5, "twice": 10})
    assert bodies == [
        {"data": inserted, "redacted": [], "meta": {"operation": "data_insert", "lookup_values": lookup}},
        {"data": updated, "redacted": [],
         "meta": {"operation": "data_update", "lookup_values": lookup, "changed_fields": ["a", "twice"]}},
        {"data": {"id": 1}, "meta": {"operation": "delete", "lookup_values": lookup}},
    ]


@pytest.mark.both_modes
def test_options_may_name_generated_columns(db, receiver, name):
    """A subscription whose lookup and predicate name stored generated columns sends what they
    say; and whatever happens to that table's changes, another table's keep flowing."""
    other = f"{name}_other"
    watched(db, receiver, other)
    try:
        watched(db, receiver, name, ddl="id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED,"
                                        " label text GENERATED ALWAYS AS ('#' || id::text) STORED",
                lookup=["label"], predicate="twice > 10")
        db.execute(f"INSERT INTO {name} (id, a) VALUES (1, 21), (2, 1)")  # 2: twice = 2, not sent
        db.execute(f"DELETE FROM {name} WHERE id = 1")
        db.execute(f"INSERT INTO {other} VALUES (1, 'after')")
        assert receiver.wait_for(1, f"/ok/{other}")[0].json()["data"] == {"id": 1, "v": "after"}
        bodies = [strip_meta(r, name) for r in in_capture_order(db, receiver.wait_for(2, f"/ok/{name}"))]
        lookup = [{"field": "label", "value": "#1"}]
        assert bodies == [
            {"data": {"id": 1, "a": 21, "twice": 42, "label": "#1"}, "redacted": [],
             "meta": {"operation": "data_insert", "lookup_values": lookup}},
            {"data": {"id": 1}, "meta": {"operation": "delete", "lookup_values": lookup}},
        ]
    finally:
        db.execute(f"DROP TABLE IF EXISTS {name}")  # a change WAL capture cannot take must not stay in its way

def test_signatures_and_headers(db, receiver, name):
    secret = watched(db, receiver, name)
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    req = receiver.wait_for(1, f"/ok/{name}")[0]
    assert req.method == "POST"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"].startswith("pg-webhook/")
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 60
    assert verify(req, secret) == (True, True)
    other = "whsec_" + base64.b64encode(bytes(32)).decode()
    assert verify(req, other) == (False, False)  # the verifiers do reject a wrong secret


def test_endpoint_method_and_headers_are_used_for_every_operation(db, receiver, name):
    make_table(db, name)
    secret = endpoint(db, name, receiver.url(f"/ok/{name}"), method="PUT",
                      headers=json.dumps({"X-Team": "billing", "Authorization": "Bearer t0k"}))
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    db.execute(f"UPDATE {name} SET v = 'y'")
    db.execute(f"DELETE FROM {name}")
    got = in_capture_order(db, receiver.wait_for(3, f"/ok/{name}"))
    assert [r.json()["meta"]["operation"] for r in got] == ["data_insert", "data_update", "delete"]
    for req in got:
        assert req.method == "PUT"
        assert req.headers["x-team"] == "billing" and req.headers["authorization"] == "Bearer t0k"
        assert req.headers["content-type"] == "application/json"
        assert verify(req, secret) == (True, True)


def test_secrets_have_the_documented_form(db, name):
    secrets = [endpoint(db, f"{name}_{i}", "http://127.0.0.1:9/") for i in range(3)]
    secrets.append(one(db, "SELECT webhook.rotate_secret(%s)", f"{name}_0"))
    assert len(set(secrets)) == 4
    for secret in secrets:
        assert secret.startswith("whsec_")
        raw = base64.b64decode(secret[len("whsec_"):], validate=True)  # standard alphabet, padded
        assert len(raw) == 32 and len(secret) == len("whsec_") + 44
    # Shown once: no view exposes them.
    for view in ("endpoints", "subscriptions", "deliveries", "endpoint_stats"):
        text = one(db, f"SELECT coalesce(string_agg(t::text, ' '), '') FROM webhook.{view} t")
        assert not any(s[len("whsec_"):] in text for s in secrets), view


KAT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KAT_ID, KAT_TS, KAT_BODY = "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}'
KAT_SIG = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_known_answer_vector_with_independent_verifiers():
    # Python's hmac, by hand.
    key = base64.b64decode(KAT_SECRET[len("whsec_"):])
    msg = f"{KAT_ID}.{KAT_TS}.{KAT_BODY}".encode()
    sig = base64.b64encode(hmac.new(key, msg, hashlib.sha256).digest()).decode()
    assert f"v1,{sig}" == KAT_SIG
    # PyPI standardwebhooks, the library the e2e tests verify with.
    when = datetime.datetime.fromtimestamp(KAT_TS, tz=datetime.timezone.utc)
    assert Webhook(KAT_SECRET).sign(KAT_ID, when, KAT_BODY) == KAT_SIG
    with pytest.raises(Exception):  # and its verify() does reject a wrong signature
        Webhook(KAT_SECRET).verify(KAT_BODY, {"webhook-id": KAT_ID, "webhook-timestamp": str(int(time.time())),
                                              "webhook-signature": KAT_SIG})


def test_x_signature_verifier_agrees_with_openssl():
    """harness.verify's X-Signature half against a third implementation (openssl), on a body
    with non-ASCII bytes, and with a secret keyed as its UTF-8 text (not base64-decoded)."""
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    body = json.dumps({"name": "Zoë \"q\"", "n": 1}, ensure_ascii=False).encode()
    out = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", secret, "-binary"], input=body,
                         capture_output=True, check=True).stdout
    expected = base64.b64encode(out).decode()
    ts = str(int(time.time()))
    headers = {"X-Signature": expected, "webhook-id": "1", "webhook-timestamp": ts,
               "webhook-signature": Webhook(secret).sign("1", datetime.datetime.fromtimestamp(
                   int(ts), tz=datetime.timezone.utc), body.decode())}
    good = Request("POST", "/", headers, body)
    assert verify(good, secret) == (True, True)
    assert verify(Request("POST", "/", headers, body + b" "), secret) == (False, False)


def test_retry_schedule_then_failed(db, receiver, name):
    path = f"/status/500/{name}"
    secret = watched(db, receiver, name, path=path)
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    (did,) = delivery_ids(db, name)
    wait_status(db, did, "failed", timeout=20)
    got = receiver.received(path)
    assert len(got) == 6
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert all(verify(r, secret) == (True, True) for r in got)
    # The gaps grow as the schedule does (100 ms doubling to 1.6 s), each within 150 ms of its
    # delay: a worker retrying on its 1 s idle poll would show gaps of about 1 s and fail.
    assert_retry_gaps(got)
    # Signed at send time: each attempt's timestamp is the second it was sent, so the first and
    # the last (3.1 s apart) differ although the row was captured once.
    stamps = [int(r.headers["webhook-timestamp"]) for r in got]
    for req, stamp in zip(got, stamps):
        assert -1 <= req.wall - stamp < 2, (req.wall, stamp)
    assert stamps[-1] - stamps[0] >= 2, stamps
    assert {r.body for r in got} == {got[0].body}  # the same bytes on every attempt
    rows = db.execute(
        "SELECT attempt, status_code, error FROM webhook.attempts WHERE delivery_id = %s ORDER BY attempt", (did,)
    ).fetchall()
    assert [(a, s) for a, s, _ in rows] == [(i, 500) for i in range(1, 7)]
    assert one(db, "SELECT attempts FROM webhook.deliveries WHERE id = %s", did) == 6
    stats = db.execute(
        "SELECT failed, consecutive_failures FROM webhook.endpoint_stats WHERE endpoint = %s", (name,)
    ).fetchone()
    assert stats == (1, 6)


def test_documented_defaults(db):
    rows = {n: (b, u) for n, b, u in db.execute(
        "SELECT name, boot_val, unit FROM pg_settings WHERE name IN ('webhook.retry_delays', 'webhook.timeout')"
    ).fetchall()}
    assert rows["webhook.retry_delays"] == ("4s,8s,16s,32s,64s", None)
    boot, unit = rows["webhook.timeout"]
    ms_per_unit = {"ms": 1, "s": 1000, "min": 60000}
    if unit is None:  # a string GUC: '10s' or an equivalent spelling
        number, unit = re.fullmatch(r"\s*(\d+)\s*(ms|s|min)\s*", boot).groups()
        boot = number
    assert int(boot) * ms_per_unit[unit] == 10000, rows["webhook.timeout"]
    # This session runs with the suite's overrides, which the running values reflect.
    assert one(db, "SHOW webhook.retry_delays") == RETRY_DELAYS
    # SPEC §4: the worker's claim setting is webhook.claim_size (it was webhook.batch_size, a
    # name that clashed with the endpoint option batch_size).
    assert one(db, "SELECT boot_val FROM pg_settings WHERE name = 'webhook.claim_size'") == "500"
    assert one(db, "SELECT count(*) FROM pg_settings WHERE name = 'webhook.batch_size'") == 0


def test_flaky_endpoint_succeeds_on_third_attempt(db, receiver, name):
    path = f"/flaky/2/{name}"
    watched(db, receiver, name, path=path)
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    (did,) = delivery_ids(db, name)
    wait_status(db, did, "delivered")
    assert len(receiver.received(path)) == 3
    row = db.execute("SELECT attempts, last_status_code FROM webhook.deliveries WHERE id = %s", (did,)).fetchone()
    assert row == (3, 200)


def test_redeliver_after_failure(db, receiver, name):
    """redeliver() starts a fresh retry cycle with the same webhook-id and the very same body
    bytes: redelivered while the endpoint still fails, a failed delivery gets 1 + 5 more attempts
    on the schedule and fails again; once the endpoint works, it is delivered."""
    bad = f"/status/404/{name}"
    watched(db, receiver, name, path=bad)
    db.execute(f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b')")
    ids = delivery_ids(db, name)
    for did in ids:
        wait_status(db, did, "failed", timeout=20)

    def sent(did, path=bad):
        return [r for r in receiver.received(path) if r.headers["webhook-id"] == message_id(db, did)]

    def attempts(did):
        return db.execute("SELECT attempt, status_code FROM webhook.attempts WHERE delivery_id = %s"
                          " ORDER BY attempt", (did,)).fetchall()

    first_cycle = sent(ids[0])
    assert len(first_cycle) == 6 and len(sent(ids[1])) == 6
    original = {did: sent(did)[0].body for did in ids}
    assert original[ids[0]] != original[ids[1]]
    # Still failing: a whole new cycle (not one attempt at the end of the old one), then failed.
    db.execute("SELECT webhook.redeliver(%s)", (ids[0],))
    wait_until(lambda: len(sent(ids[0])) >= 12, timeout=20, what="a second cycle of six attempts")
    wait_status(db, ids[0], "failed", timeout=10)
    second_cycle = sent(ids[0])[6:]
    assert len(second_cycle) == 6
    assert_retry_gaps(second_cycle)  # the schedule from its start again
    assert [r.body for r in second_cycle] == [original[ids[0]]] * 6  # byte-identical re-sends
    assert attempts(ids[0]) == [(i, 404) for i in range(1, 13)]  # attempt numbers continue
    assert len(sent(ids[1])) == 6  # the other failed delivery was left alone
    # Now the endpoint works: delivered at the first attempt of a third cycle, same id and bytes.
    db.execute("SELECT webhook.alter_endpoint(%s, url => %s)", (name, receiver.url(f"/ok/{name}")))
    db.execute("SELECT webhook.redeliver(%s)", (ids[0],))
    wait_status(db, ids[0], "delivered")
    (good,) = receiver.wait_for(1, f"/ok/{name}")
    assert good.headers["webhook-id"] == message_id(db, ids[0])
    assert good.body == original[ids[0]]
    assert attempts(ids[0])[-1] == (13, 200)
    assert one(db, "SELECT webhook.redeliver_failed(%s)", name) == 1
    wait_status(db, ids[1], "delivered")
    (other,) = sent(ids[1], f"/ok/{name}")
    assert other.body == original[ids[1]]
    assert attempts(ids[1])[-1] == (7, 200)


@pytest.mark.both_modes
def test_rollbacks_send_nothing(cluster, db, receiver, name):
    watched(db, receiver, name)
    with cluster.connect(autocommit=False) as tx:
        tx.execute(f"INSERT INTO {name} VALUES (1, 'rolled back')")
        tx.rollback()
        tx.execute(f"INSERT INTO {name} VALUES (2, 'kept')")
        tx.execute("SAVEPOINT s")
        tx.execute(f"INSERT INTO {name} VALUES (3, 'savepoint rolled back')")
        tx.execute("ROLLBACK TO SAVEPOINT s")
        tx.execute(f"INSERT INTO {name} VALUES (4, 'kept too')")
        tx.commit()
    db.execute(f"INSERT INTO {name} VALUES (5, 'marker')")
    receiver.wait_for(3, f"/ok/{name}")
    time.sleep(1.0)
    got = sorted(r.json()["data"]["id"] for r in receiver.received(f"/ok/{name}"))
    assert got == [2, 4, 5]
    assert one(db, "SELECT count(*) FROM webhook.deliveries WHERE endpoint = %s", name) == 3


def test_fan_out(db, receiver, name):
    make_table(db, f"{name}_a")
    make_table(db, f"{name}_b")
    s1 = endpoint(db, f"{name}_1", receiver.url(f"/ok/{name}/1"))
    s2 = endpoint(db, f"{name}_2", receiver.url(f"/ok/{name}/2"))
    db.execute("SELECT webhook.watch(%s, %s)", (f"{name}_a", f"{name}_1"))
    db.execute("SELECT webhook.watch(%s, %s)", (f"{name}_a", f"{name}_2"))
    db.execute("SELECT webhook.watch(%s, %s)", (f"{name}_b", f"{name}_1"))
    db.execute(f"INSERT INTO {name}_a VALUES (1, 'x')")
    db.execute(f"INSERT INTO {name}_b VALUES (2, 'y')")
    one_ = receiver.wait_for(2, f"/ok/{name}/1")
    two = receiver.wait_for(1, f"/ok/{name}/2")
    assert sorted(r.json()["meta"]["table"] for r in one_) == [f"public.{name}_a", f"public.{name}_b"]
    assert two[0].json()["meta"]["table"] == f"public.{name}_a"
    assert all(verify(r, s1) == (True, True) for r in one_)
    assert verify(two[0], s2) == (True, True)
    assert verify(two[0], s1) == (False, False)


def test_non_2xx_timeout_and_redirect_recorded(db, receiver, name):
    cases = {"nf": f"/status/404/{name}", "slow": f"/sleep/5/{name}", "moved": f"/status/302/{name}"}
    for suffix, path in cases.items():
        watched(db, receiver, f"{name}_{suffix}", path=path)
    for suffix in cases:
        db.execute(f"INSERT INTO {name}_{suffix} VALUES (1, 'x')")
    ids = {s: delivery_ids(db, f"{name}_{s}")[0] for s in cases}

    def first_attempt(s):
        return db.execute(
            "SELECT status_code, error, duration_ms FROM webhook.attempts WHERE delivery_id = %s AND attempt = 1",
            (ids[s],),
        ).fetchone()

    nf = wait_until(lambda: first_attempt("nf"), what="404 attempt")
    assert nf[0] == 404
    moved = wait_until(lambda: first_attempt("moved"), what="302 attempt")
    assert moved[0] == 302
    slow = wait_until(lambda: first_attempt("slow"), timeout=10, what="timed-out attempt")
    assert slow[0] is None and "timeout" in slow[1]
    assert 1900 <= slow[2] < 4000
    assert one(db, "SELECT status FROM webhook.deliveries WHERE id = %s", ids["moved"]) != "delivered"
    time.sleep(0.5)
    assert receiver.received(receiver.redirect_target(cases["moved"])) == []  # not followed, by any method
    assert len(receiver.received(cases["moved"])) >= 1


def test_disabled_endpoint_keeps_capturing(db, receiver, name):
    watched(db, receiver, name)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    (did,) = delivery_ids(db, name)
    time.sleep(1.0)
    assert receiver.received(f"/ok/{name}") == []
    assert one(db, "SELECT status FROM webhook.deliveries WHERE id = %s", did) == "pending"
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
    wait_status(db, did, "delivered")


def test_endpoint_changes_reach_other_sessions_capture_plans(cluster, db, receiver, name):
    """Capture plans are cached per session; an endpoint change made elsewhere must reach them:
    a session that captured while the endpoint was disabled wakes the worker once it is enabled
    (delivery well inside the worker's 1 s idle poll), and a format change applies at once."""
    watched(db, receiver, name)
    db.execute("SELECT webhook.alter_endpoint(%s, enabled => false)", (name,))
    with cluster.connect() as writer:
        writer.execute(f"INSERT INTO {name} VALUES (1, 'while disabled')")  # plan cached: disabled
        time.sleep(0.3)
        assert receiver.received(f"/ok/{name}") == []
        db.execute("SELECT webhook.alter_endpoint(%s, enabled => true)", (name,))
        receiver.wait_for(1, f"/ok/{name}")
        for attempt in range(5):
            wait_worker_idle(db)  # else a busy worker's 50 ms result poll would find the row anyway
            started = time.monotonic()
            writer.execute(f"INSERT INTO {name} VALUES (%s, 'after enable')", (10 + attempt,))
            got = receiver.wait_for(2 + attempt, f"/ok/{name}")
            # Well inside the 1 s idle poll: only the commit's wake-up gets it there this soon.
            assert got[-1].received - started < WAKE_DEADLINE_S, "the commit did not wake the worker"
        db.execute("SELECT webhook.alter_endpoint(%s, format => 'census')", (name,))
        writer.execute(f"INSERT INTO {name} VALUES (2, 'census')")
        last = in_capture_order(db, receiver.wait_for(7, f"/ok/{name}"))[-1].json()
        assert last["operation"] == "changed" and last["data"] == [{"id": 2, "v": "census"}]


def test_ordinary_role_captures_but_cannot_see_the_queue(cluster, db, receiver, name):
    watched(db, receiver, name)
    db.execute(f"CREATE ROLE {name}_app LOGIN")
    db.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {name} TO {name}_app")
    assert one(db, "SELECT has_schema_privilege(%s, 'webhook', 'USAGE')", f"{name}_app") is False
    with cluster.connect(user=f"{name}_app") as app:
        app.execute(f"INSERT INTO {name} VALUES (1, 'from app')")
        app.execute(f"UPDATE {name} SET v = 'changed by app'")
        app.execute(f"DELETE FROM {name}")
        for sql in ("SELECT * FROM webhook.deliveries", "SELECT * FROM webhook.endpoint",
                    "SELECT webhook.create_endpoint('x', 'http://127.0.0.1/')",
                    "INSERT INTO webhook.delivery (endpoint_id, operation, payload) VALUES (1, 'x', '{}')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(sql)
    got = [r.json() for r in in_capture_order(db, receiver.wait_for(3, f"/ok/{name}"))]
    assert [(b["meta"]["operation"], b["data"]) for b in got] == [
        ("data_insert", {"id": 1, "v": "from app"}),
        ("data_update", {"id": 1, "v": "changed by app"}),
        ("delete", {"id": 1}),
    ]


def test_test_endpoint(db, receiver, name):
    secret = endpoint(db, name, receiver.url(f"/ok/{name}"))
    status, latency, error = db.execute("SELECT * FROM webhook.test_endpoint(%s)", (name,)).fetchone()
    assert (status, error) == (200, None) and latency > 0
    assert verify(receiver.wait_for(1, f"/ok/{name}")[0], secret) == (True, True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    db.execute("SELECT webhook.alter_endpoint(%s, url => %s)", (name, f"http://127.0.0.1:{closed}/"))
    status, _, error = db.execute("SELECT * FROM webhook.test_endpoint(%s)", (name,)).fetchone()
    assert status is None and "refused" in error.lower()


def test_test_endpoint_sends_a_sample_in_the_endpoints_format(db, receiver, name):
    """rownd endpoints get a rownd sample, census endpoints a census envelope (SPEC §2) whose data
    is an array of one record; both signed like any delivery, with every live secret."""
    rownd = endpoint(db, f"{name}_r", receiver.url(f"/ok/{name}/r"))
    census = endpoint(db, f"{name}_c", receiver.url(f"/ok/{name}/c"), format="census")
    for ep in (f"{name}_r", f"{name}_c"):
        assert db.execute("SELECT status_code, error FROM webhook.test_endpoint(%s)", (ep,)).fetchone() == (200, None)
    req = receiver.wait_for(1, f"/ok/{name}/r")[0]
    assert verify(req, rownd) == (True, True)
    body = req.json()
    assert body["meta"].pop("id") == req.headers["webhook-id"]
    occurred = datetime.datetime.fromisoformat(body["meta"].pop("occurred_at").replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - occurred).total_seconds()) < 60
    assert body == {"data": {"message": "webhook.test_endpoint sample"}, "redacted": [], "meta": {"operation": "test"}}

    req = receiver.wait_for(1, f"/ok/{name}/c")[0]
    assert verify(req, census) == (True, True)
    pairs = json.loads(req.body, object_pairs_hook=lambda kv: kv)  # keys in the order sent
    assert [k for k, _ in pairs] == ["api_version", "operation", "sync_run_at", "connection_name", "model_name",
                                     "schema_name", "table_name", "sync_configuration_id",
                                     "sync_configuration_name", "data"]
    body = req.json()
    sync = datetime.datetime.fromisoformat(body.pop("sync_run_at").replace("Z", "+00:00"))
    assert abs((datetime.datetime.now(datetime.timezone.utc) - sync).total_seconds()) < 60
    assert body == {"api_version": 1, "operation": "changed", "connection_name": f"{name}_c",
                    "model_name": "webhook.test_endpoint", "schema_name": "webhook", "table_name": "test_endpoint",
                    "sync_configuration_id": None, "sync_configuration_name": None,
                    "data": [{"message": "webhook.test_endpoint sample"}]}

    # The sample follows the endpoint's current format, and carries every live secret's signature.
    new = one(db, "SELECT webhook.rotate_secret(%s)", f"{name}_c")
    db.execute("SELECT webhook.alter_endpoint(%s, format => 'rownd')", (f"{name}_c",))
    assert db.execute("SELECT status_code FROM webhook.test_endpoint(%s)", (f"{name}_c",)).fetchone() == (200,)
    req = receiver.wait_for(2, f"/ok/{name}/c")[1]
    assert req.json()["meta"]["operation"] == "test"
    assert verify(req, new) == (True, True)
    Webhook(census).verify(req.body, req.headers)
    assert len(req.headers["webhook-signature"].split(" ")) == 2


@pytest.mark.both_modes
def test_commit_wakes_the_worker_promptly(db, receiver, name):
    """From idle (sleeping on a 1 s poll), a commit gets its delivery out within 300 ms, five
    times over: a worker that ignored the commit's wake-up would wait for its poll."""
    watched(db, receiver, name)
    for i in range(5):
        wait_worker_idle(db)
        start = time.monotonic()
        db.execute(f"INSERT INTO {name} VALUES (%s, 'x')", (i,))
        req = receiver.wait_for(i + 1, f"/ok/{name}", timeout=5)[-1]
        assert req.received - start < WAKE_DEADLINE_S, (i, req.received - start)


def test_secret_rotation_signs_with_both(db, receiver, name):
    old = watched(db, receiver, name)
    new = one(db, "SELECT webhook.rotate_secret(%s)", name)
    assert new != old and new.startswith("whsec_")
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    req = receiver.wait_for(1, f"/ok/{name}")[0]
    assert verify(req, new) == (True, True)
    Webhook(old).verify(req.body, req.headers)  # the overlap keeps the old secret valid
    assert len(req.headers["webhook-signature"].split(" ")) == 2


def standard_entry(secret, req):
    """The webhook-signature entry `secret` gives for this request, computed with hmac by hand."""
    key = base64.b64decode(secret[len("whsec_"):], validate=True)
    signed = f"{req.headers['webhook-id']}.{req.headers['webhook-timestamp']}.".encode() + req.body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def test_rotations_within_the_overlap_keep_every_live_secret_until_its_own_expiry(db, receiver, name):
    """a -> b with a 10 s overlap, then b -> c with a 5 s one: c, b, a sign (newest first); once
    b's overlap ends, c and a (a's is longer); once a's ends, c alone. X-Signature: c only."""
    a = watched(db, receiver, name)
    db.execute("SET webhook.rotation_overlap = '10s'")
    b = one(db, "SELECT webhook.rotate_secret(%s)", name)
    db.execute("SET webhook.rotation_overlap = '5s'")
    c = one(db, "SELECT webhook.rotate_secret(%s)", name)
    db.execute("RESET webhook.rotation_overlap")
    expires = dict(db.execute("SELECT p.secret, p.expires_at FROM webhook.previous_secret p"
                              " JOIN webhook.endpoint e ON e.id = p.endpoint_id WHERE e.name = %s", (name,)).fetchall())
    assert set(expires) == {a, b} and expires[b] < expires[a]
    assert db.execute("SELECT rotation_overlap, rotation_overlap_until FROM webhook.endpoints WHERE name = %s",
                      (name,)).fetchone() == (True, expires[a])

    def send(row, live):
        db.execute(f"INSERT INTO {name} VALUES (%s, 'x')", (row,))
        req = receiver.wait_for(row, f"/ok/{name}")[row - 1]
        assert req.json()["data"]["id"] == row
        assert req.headers["webhook-signature"].split(" ") == [standard_entry(s, req) for s in live]
        for secret in (a, b, c):
            if secret in live:
                Webhook(secret).verify(req.body, req.headers)
            else:
                with pytest.raises(WebhookVerificationError):
                    Webhook(secret).verify(req.body, req.headers)
        assert verify(req, c) == (True, True)
        assert verify(req, live[-1])[0] == (live[-1] == c)  # X-Signature is the newest secret's alone

    def past(moment):
        wait_until(lambda: one(db, "SELECT now() > %s", moment), timeout=20, what=f"the clock to pass {moment}")

    send(1, [c, b, a])
    past(expires[b])
    send(2, [c, a])
    past(expires[a])
    send(3, [c])
    assert db.execute("SELECT rotation_overlap, rotation_overlap_until FROM webhook.endpoints WHERE name = %s",
                      (name,)).fetchone() == (False, None)


def test_operators_bring_their_own_secrets(db, receiver, name):
    """create_endpoint and rotate_secret take a secret (whsec_ + base64 of at least 24 bytes)
    and return it; it signs like a generated one."""
    make_table(db, name)
    mine = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    assert endpoint(db, name, receiver.url(f"/ok/{name}"), secret=mine) == mine
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    req = receiver.wait_for(1, f"/ok/{name}")[0]
    assert verify(req, mine) == (True, True)
    assert req.headers["webhook-signature"] == standard_entry(mine, req)
    theirs = "whsec_" + base64.b64encode(os.urandom(64)).decode()
    assert one(db, "SELECT webhook.rotate_secret(%s, secret => %s)", name, theirs) == theirs
    db.execute(f"INSERT INTO {name} VALUES (2, 'y')")
    req = receiver.wait_for(2, f"/ok/{name}")[1]
    assert verify(req, theirs) == (True, True)
    assert req.headers["webhook-signature"].split(" ") == [standard_entry(theirs, req), standard_entry(mine, req)]
    # Rotating to the current secret changes nothing and says so (without echoing it).
    with pytest.raises(psycopg.errors.InvalidParameterValue) as e:
        db.execute("SELECT webhook.rotate_secret(%s, secret => %s)", (name, theirs))
    assert "current secret" in str(e.value) and theirs[6:] not in str(e.value)


def test_secrets_stay_out_of_errors_and_the_server_log(cluster, db, name):
    """A secret passed inline in the statement text: no error message, detail, hint or context
    shows it, and the server log has the error but not the statement (log_min_error_statement
    would log it). Errors of other statements, before and after, still log theirs."""
    endpoint(db, name, "http://127.0.0.1:9/")
    short = "whsec_" + base64.b64encode(os.urandom(16)).decode()
    good = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    current = one(db, "SELECT secret FROM webhook.endpoint WHERE name = %s", name)
    literal = psycopg.sql.Literal
    calls = [  # (statement with the secret inline, SQLSTATE)
        (psycopg.sql.SQL("SELECT webhook.create_endpoint({}, 'http://127.0.0.1:9/', secret => {})")
         .format(literal(f"{name}_x"), literal(short)), "22023"),
        (psycopg.sql.SQL("SELECT webhook.create_endpoint({}, 'http://127.0.0.1:9/', secret => {})")
         .format(literal(name), literal(good)), "42710"),
        (psycopg.sql.SQL("SELECT webhook.rotate_secret({}, secret => {})").format(literal(name), literal(short)),
         "22023"),
        (psycopg.sql.SQL("SELECT webhook.rotate_secret({}, {})").format(literal(name), literal(current)), "22023"),
        (psycopg.sql.SQL("DO $$ BEGIN PERFORM webhook.rotate_secret({}, {}); END $$")
         .format(literal(name), literal(short)), "22023"),
    ]
    marker = f"not_an_endpoint_{name}"
    with pytest.raises(psycopg.errors.UndefinedObject):
        db.execute(f"SELECT webhook.rotate_secret('{marker}_before')")
    for statement, sqlstate in calls:
        with pytest.raises(psycopg.Error) as e:
            db.execute(statement)
        assert e.value.sqlstate == sqlstate, (e.value.sqlstate, e.value)
        diag = e.value.diag
        shown = " ".join(filter(None, [diag.message_primary, diag.message_detail, diag.message_hint]))
        for secret in (short, good, current):
            assert secret[6:] not in shown, shown
    with pytest.raises(psycopg.errors.UndefinedObject):
        db.execute(f"SELECT webhook.rotate_secret('{marker}_after')")
    log = cluster.log_text()
    assert "STATEMENT:  SELECT webhook.rotate_secret('" + marker + "_before')" in log
    assert "STATEMENT:  SELECT webhook.rotate_secret('" + marker + "_after')" in log
    assert log.count("invalid secret: it decodes to 16 bytes") >= 3
    assert f'endpoint "{name}" already exists' in log
    for secret in (short, good, current):
        assert secret[6:] not in log


def test_concurrent_sends_reuse_keep_alive_connections(db, receiver, name):
    watched(db, receiver, name)
    for batch in range(4):  # four bursts, so connections must outlive a burst to be reused
        db.execute(f"INSERT INTO {name} SELECT g, 'x' FROM generate_series({batch * 25 + 1}, {batch * 25 + 25}) g")
        receiver.wait_for((batch + 1) * 25, f"/ok/{name}")
    got = receiver.received(f"/ok/{name}")
    connections = {r.peer for r in got}
    assert 1 < len(connections) <= 16, len(connections)  # concurrent, and at most one per sender
    assert len(got) == 100


@pytest.mark.both_modes
def test_census_format(db, receiver, name):
    """Format census: the batch envelope of SPEC §2, changed/deleted, model name, subscription id."""
    make_table(db, name, "id int PRIMARY KEY, company text, email text")
    secret = endpoint(db, name, receiver.url(f"/ok/{name}"), format="census")
    sid = one(db, "SELECT webhook.watch(%s, %s, events => '{insert,delete}', name => 'active users',"
                  " columns => '{id,company}')", name, name)
    assert isinstance(sid, int)
    db.execute(f"INSERT INTO {name} VALUES (1, 'Walsh and Sons', 'isadora@safetymail.info')")
    db.execute(f"UPDATE {name} SET company = 'x'")  # not subscribed: an "update or create" needs update
    db.execute(f"DELETE FROM {name}")
    got = in_capture_order(db, receiver.wait_for(2, f"/ok/{name}"))
    bodies = []
    for req in got:
        assert verify(req, secret) == (True, True)
        body = req.json()
        sync = datetime.datetime.fromisoformat(body.pop("sync_run_at").replace("Z", "+00:00"))
        assert abs((datetime.datetime.now(datetime.timezone.utc) - sync).total_seconds()) < 60
        bodies.append(body)
    common = {"api_version": 1, "connection_name": name, "model_name": "active users", "schema_name": "public",
              "table_name": name, "sync_configuration_id": sid, "sync_configuration_name": None}
    assert bodies[0] == {**common, "operation": "changed", "data": [{"id": 1, "company": "Walsh and Sons"}]}
    assert bodies[1] == {**common, "operation": "deleted", "data": [{"id": 1}]}
    time.sleep(0.3)
    assert len(receiver.received(f"/ok/{name}")) == 2


@pytest.mark.both_modes
def test_census_model_name_defaults_to_schema_table(db, receiver, name):
    make_table(db, name)
    endpoint(db, name, receiver.url(f"/ok/{name}"), format="census")
    db.execute("SELECT webhook.watch(%s, %s)", (name, name))
    db.execute(f"INSERT INTO {name} VALUES (1, 'x')")
    body = receiver.wait_for(1, f"/ok/{name}")[0].json()
    assert (body["model_name"], body["operation"], body["data"]) == (f"public.{name}", "changed", [{"id": 1, "v": "x"}])


def test_occurred_at_is_the_capturing_transactions_time(cluster, db, receiver, name):
    """meta.occurred_at is the transaction's time (now()), the same for every row it changed."""
    watched(db, receiver, name)
    with cluster.connect(autocommit=False) as tx:
        tx_now = tx.execute("SELECT now()").fetchone()[0]
        tx.execute(f"INSERT INTO {name} VALUES (1, 'a'), (2, 'b')")
        time.sleep(0.2)  # statement time moves on; transaction time does not
        tx.execute(f"UPDATE {name} SET v = 'c' WHERE id = 1")
        tx.commit()
    got = receiver.wait_for(3, f"/ok/{name}")
    stamps = {datetime.datetime.fromisoformat(r.json()["meta"]["occurred_at"].replace("Z", "+00:00")) for r in got}
    assert stamps == {tx_now}
