# Sourced by tests/pg_regress/run.sh and tests/isolation/run.sh: a throwaway PostgreSQL 15
# cluster with the installed extension, preloaded, its worker pointed at database "postgres" so
# nothing queued in the test database is ever sent. PostgreSQL refuses to run as root: as root,
# the cluster belongs to the postgres OS user (runuser), as in tests/e2e/harness.py.
#
# The caller sets SUITE (the name in messages) and may set KEEP=1 to keep the cluster's
# directory. After start_cluster: WORK (the directory), PORT, PG_BIN; stopped and removed on exit.
# shellcheck shell=bash

PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
PG_BIN=$("$PG_CONFIG" --bindir)
PGXS_DIR=$(dirname "$(dirname "$("$PG_CONFIG" --pgxs)")")

say() { printf '\033[1m[%s]\033[0m %s\n' "$SUITE" "$*"; }
die() { say "$*" >&2; exit 2; }

as_postgres() {
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# Stop the cluster and remove its directory (unless KEEP is set).
cleanup() {
    as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
    if [[ ${KEEP:-} ]]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}

# Start the cluster; extra postgresql.conf lines come on standard input.
start_cluster() {
    [[ -f $("$PG_CONFIG" --sharedir)/extension/webhook.control ]] ||
        die "the webhook extension is not installed into $("$PG_CONFIG" --sharedir); run cargo pgrx install --pg-config $PG_CONFIG"
    local extra
    extra=$(cat)
    WORK=$(mktemp -d "/tmp/webhook-$SUITE.XXXXXX")
    [[ $(id -u) == 0 ]] && chown postgres "$WORK"
    trap cleanup EXIT
    as_postgres "$PG_BIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
    # A port found free can be taken before the server binds it: try another then.
    local try
    for try in 1 2 3 4 5; do
        PORT=$("${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        cat >"$WORK/data/postgresql.auto.conf" <<CONF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
fsync = off
shared_preload_libraries = 'webhook'
webhook.database = 'postgres'
$extra
CONF
        [[ $(id -u) == 0 ]] && chown postgres "$WORK/data/postgresql.auto.conf"
        if as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w -t 60 start >/dev/null; then
            say "throwaway cluster in $WORK, port $PORT"
            return 0
        fi
        grep -q "could not bind\|could not create any TCP/IP sockets" "$WORK/server.log" || break
        say "port $PORT was taken (try $try); trying another"
    done
    cat "$WORK/server.log" >&2
    die "the cluster did not start"
}
