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
export SUITE=pg_regress
# shellcheck source=SCRIPTDIR/../cluster.sh
. "$HERE/../cluster.sh"
PG_REGRESS=$PGXS_DIR/test/regress/pg_regress
DBNAME=webhook_regress

[[ -x $PG_REGRESS ]] || die "pg_regress not found at $PG_REGRESS (apt-get install postgresql-client-15)"
start_cluster <<<"client_min_messages = warning"
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
