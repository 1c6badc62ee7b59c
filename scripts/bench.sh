#!/usr/bin/env bash
# The benchmark of README's "Performance" table: a release build, nginx on 127.0.0.1 as the
# receiver, pgbench for the write path. Takes about 12 minutes on 2 cores.
#   ./scripts/bench.sh --only census     # figure 9 and its rownd baseline alone
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/env.sh
. scripts/env.sh
./scripts/setup.sh
if ! command -v nginx >/dev/null; then
    # Keep the package from starting its own server on port 80.
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    export DEBIAN_FRONTEND=noninteractive
    status=0
    { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; } </dev/null || status=$?
    rm -f /usr/sbin/policy-rc.d
    ((status == 0)) || exit "$status"
fi
# PG_CONFIG picks the PostgreSQL to install into and run (default: Debian's); BENCH_PROFILE=debug
# skips the release build (numbers are then only comparable within one run).
PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
export PG_CONFIG
profile=(--release)
[[ ${BENCH_PROFILE:-release} == debug ]] && profile=()
cargo pgrx install "${profile[@]}" --pg-config "$PG_CONFIG" >/dev/null
exec "$PYTHON" bench/bench.py "$@"
