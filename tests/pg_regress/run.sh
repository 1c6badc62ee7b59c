#!/usr/bin/env bash
# The SQL-surface regression tests (tests/pg_regress/sql/*.sql against expected/*.out) without
# building anything: PostgreSQL's own pg_regress against a throwaway cluster with the installed
# extension (`cargo pgrx install` first). It follows `cargo pgrx regress`'s conventions, so both
# read the same files: database webhook_regress, setup.sql first, psql with VERBOSITY=terse,
# client_min_messages=warning.
#
#   tests/pg_regress/run.sh              # setup, then every test in name order
#   tests/pg_regress/run.sh errors tour  # setup, then the named tests
#   KEEP=1 tests/pg_regress/run.sh       # keep the cluster directory and the results
#
# The cluster preloads webhook but points its worker at database "postgres", so nothing queued
# in webhook_regress is ever sent. PostgreSQL refuses to run as root: as root, the cluster
# belongs to the postgres OS user (runuser). Exits non-zero, after printing the diffs, on failure.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir)
PG_REGRESS=$(dirname "$(dirname "$("$PG_CONFIG" --pgxs)")")/test/regress/pg_regress
DBNAME=webhook_regress

say() { printf '\033[1m[pg_regress]\033[0m %s\n' "$*"; }
die() { say "$*" >&2; exit 2; }

[[ -x $PG_REGRESS ]] || die "pg_regress not found at $PG_REGRESS (apt-get install postgresql-server-dev-15)"
[[ -f $("$PG_CONFIG" --sharedir)/extension/webhook.control ]] ||
    die "the webhook extension is not installed into $("$PG_CONFIG" --sharedir); run cargo pgrx install --pg-config $PG_CONFIG"

as_postgres() {
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

WORK=$(mktemp -d /tmp/webhook-pg_regress.XXXXXX)
[[ $(id -u) == 0 ]] && chown postgres "$WORK"
cleanup() {
    as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
    if [[ ${KEEP:-} ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

PORT=$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
say "throwaway cluster in $WORK, port $PORT"
as_postgres "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
fsync = off
client_min_messages = warning
shared_preload_libraries = 'webhook'
webhook.database = 'postgres'
CONF
if ! as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start >/dev/null; then
    cat "$WORK/server.log" >&2
    die "the cluster did not start"
fi
"$PG_BIN/createdb" -h 127.0.0.1 -p "$PORT" -U postgres "$DBNAME"

# As cargo pgrx regress does: psql gets -v VERBOSITY=terse through a launcher.
cat >"$WORK/launcher.sh" <<'LAUNCH'
#!/bin/bash
$* -v VERBOSITY=terse
LAUNCH
chmod 755 "$WORK/launcher.sh"

if (($#)); then
    tests=(setup "$@")
else
    tests=(setup $(cd "$HERE/sql" && ls *.sql | sed 's/\.sql$//' | grep -vx setup | LC_ALL=C sort))
fi
status=0
(cd "$HERE" && "$PG_REGRESS" --use-existing --host=127.0.0.1 --port="$PORT" --user=postgres \
    --dbname="$DBNAME" --inputdir="$HERE" --outputdir="$WORK/out" --launcher="$WORK/launcher.sh" \
    "${tests[@]}") || status=$?
if ((status)); then
    [[ -f $WORK/out/regression.diffs ]] && cat "$WORK/out/regression.diffs"
    say "FAILED (diffs above; KEEP=1 keeps $WORK)"
    exit 1
fi
say "all tests passed"
