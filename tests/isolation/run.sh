#!/usr/bin/env bash
# Concurrency tests of the queue: pg_isolation_regress specs in tests/isolation/specs/, run
# against a throwaway PostgreSQL 15 cluster with the installed extension (`cargo pgrx install`
# first). No worker touches the test database: webhook is preloaded (the extension needs it) but
# its worker connects to database "postgres"; the specs' sessions play the worker, with the
# worker's own statements.
#
#   tests/isolation/run.sh                 # every spec in tests/isolation/schedule
#   tests/isolation/run.sh lease_expiry    # only the named specs
#   KEEP=1 tests/isolation/run.sh          # keep the cluster directory and the results
#
# The worker's claim and record statements live in Rust (CLAIM_SQL and RECORD_SQL in
# src/worker/claim.rs). This script reads them from there and wraps each, unchanged, in a
# function of schema webhook_test, so the specs exercise the very statements the worker runs:
#   webhook_test.claim(n, lease DEFAULT '20 s', per_endpoint DEFAULT 16)
#       -> TABLE (id, attempts)      what the worker claims; n = webhook.claim_size
#   webhook_test.record(delivery, attempt, outcome, status_code DEFAULT NULL, error DEFAULT NULL,
#                       delay DEFAULT '0')   outcome: 'delivered', 'retry' or 'failed'
#
# PostgreSQL refuses to run as root: as root, the cluster belongs to the postgres OS user
# (runuser), as in tests/e2e/harness.py. Exits non-zero, after printing the diffs, on failure.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
export SUITE=isolation
# shellcheck source=SCRIPTDIR/../cluster.sh
. "$HERE/../cluster.sh"
ISOLATION_REGRESS=$PGXS_DIR/test/isolation/pg_isolation_regress
DBNAME=webhook_isolation

[[ -x $ISOLATION_REGRESS ]] || die "pg_isolation_regress not found at $ISOLATION_REGRESS (apt-get install postgresql-client-15)"
start_cluster </dev/null

# The worker's statements, as compiled into the extension (fails loudly if they moved or if
# their parameters changed: the wrappers below pass them positionally).
"${PYTHON:-python3}" - "$ROOT/src/worker/claim.rs" >"$WORK/helpers.sql" <<'PY'
import re, sys
src = open(sys.argv[1]).read()

def rust_str(name):
    m = re.search(r'const %s: &str = "((?:[^"\\]|\\.)*)";' % name, src, re.S)
    if not m:
        sys.exit(f"run.sh: {name} not found in {sys.argv[1]}")
    text = m.group(1)
    if "\\" in text or "$worker$" in text:
        sys.exit(f"run.sh: {name} contains escapes; teach run.sh to unescape them")
    return text

def params(name):
    m = re.search(r'const %s: Statement = \(\s*%s_SQL,\s*&\[(.*?)\],?\s*\);' % (name, name), src, re.S)
    if not m:
        sys.exit(f"run.sh: the parameter list of {name} was not found in {sys.argv[1]}")
    return [p.strip() for p in m.group(1).split(",") if p.strip()]

expect = {
    "CLAIM": ["INT8OID", "FLOAT8OID", "INT4OID", "INT8ARRAYOID", "INT4ARRAYOID", "INT8ARRAYOID",
              "TIMESTAMPTZARRAYOID", "INT8ARRAYOID"],
    "RECORD": ["INT8ARRAYOID", "INT4ARRAYOID", "FLOAT8ARRAYOID", "FLOAT8ARRAYOID", "INT4ARRAYOID",
               "TEXTARRAYOID", "TEXTARRAYOID", "FLOAT8ARRAYOID", "BOOLARRAYOID", "TEXTARRAYOID"],
}
for name, types in expect.items():
    if params(name) != types:
        sys.exit(f"run.sh: the parameters of {name}_SQL changed ({params(name)}); "
                 f"update the wrapper webhook_test.{name.lower()} in tests/isolation/run.sh")

print(f"""
CREATE SCHEMA webhook_test;
COMMENT ON SCHEMA webhook_test IS
    'The worker''s own claim and record statements (src/worker/claim.rs), for the isolation specs';

-- One claim as the worker makes it: no cursors, nothing in flight. Returns what was claimed.
CREATE FUNCTION webhook_test.claim(n bigint, lease interval DEFAULT '20 s', per_endpoint int DEFAULT 16)
RETURNS TABLE (id bigint, attempts int) LANGUAGE plpgsql AS $fn$
DECLARE
    r record;
BEGIN
    FOR r IN EXECUTE $worker${rust_str("CLAIM_SQL")}$worker$
        USING n, extract(epoch FROM lease)::float8 * 1000, per_endpoint,
              '{{}}'::int8[], '{{}}'::int4[], '{{}}'::int8[], '{{}}'::timestamptz[], '{{}}'::int8[]
    LOOP
        id := r.id;
        attempts := r.attempts;
        RETURN NEXT;
    END LOOP;
END
$fn$;

-- One attempt's outcome as the worker records it: 'delivered', 'retry' (after delay) or 'failed'.
CREATE FUNCTION webhook_test.record(delivery bigint, attempt int, outcome text,
                                    status_code int DEFAULT NULL, error text DEFAULT NULL,
                                    delay interval DEFAULT '0')
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE $worker${rust_str("RECORD_SQL")}$worker$
        USING ARRAY[delivery], ARRAY[attempt], ARRAY[extract(epoch FROM now())::float8],
              ARRAY[1.5::float8], ARRAY[status_code], ARRAY[error],
              -- the delivery's next status, the wait before a retry, whether it was delivered
              ARRAY[CASE outcome WHEN 'retry' THEN 'pending' ELSE outcome END],
              ARRAY[CASE WHEN outcome = 'retry' THEN extract(epoch FROM delay)::float8 * 1000 END],
              ARRAY[outcome = 'delivered'], ARRAY[NULL::text];
END
$fn$;
""")
PY

psql_() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres "$@"; }
psql_ -d postgres -c "CREATE DATABASE $DBNAME"
# CREATE EXTENSION warns that no worker delivers from this database: that is the point here.
psql_ -d "$DBNAME" -c "SET client_min_messages = error" -c "CREATE EXTENSION webhook"
psql_ -d "$DBNAME" -f "$WORK/helpers.sql"

if (($#)); then tests=("$@"); else tests=(--schedule="$HERE/schedule"); fi
status=0
"$ISOLATION_REGRESS" --use-existing --host=127.0.0.1 --port="$PORT" --user=postgres \
    --dbname="$DBNAME" --inputdir="$HERE" --outputdir="$WORK/out" "${tests[@]}" || status=$?
if ((status)); then
    [[ -f $WORK/out/regression.diffs ]] && cat "$WORK/out/regression.diffs"
    say "FAILED (diffs above; KEEP=1 keeps $WORK)"
    exit 1
fi
say "all specs passed"
