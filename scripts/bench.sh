#!/usr/bin/env bash
# The benchmark of README's "Performance" table: a release build, nginx on 127.0.0.1 as the
# receiver, pgbench for the write path. Takes about 12 minutes on 2 cores.
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
# PG_CONFIG may name another PostgreSQL 15 installation (a copy beside the system one).
cargo pgrx install --release --pg-config "${PG_CONFIG:-/usr/bin/pg_config}" >/dev/null
exec "$PYTHON" bench/bench.py "$@"
