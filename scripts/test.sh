#!/usr/bin/env bash
# The whole test suite: lint, unit and in-database tests (cargo pgrx test), the SQL surface's
# pg_regress files, the claim isolation specs, then the end-to-end suite against a real cluster
# with the worker loaded and a real HTTP receiver on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/env.sh
. scripts/env.sh
./scripts/setup.sh

say() { printf '\033[1m[test]\033[0m %s\n' "$*"; }

say "cargo fmt --check"
cargo fmt --check
say "cargo clippy"
cargo clippy --quiet --features pg15 -- -D warnings

# PostgreSQL refuses to run as root: the test cluster's data directory belongs to postgres.
PGDATA_DIR=$(mktemp -d /tmp/webhook-pgtest.XXXXXX)
chown postgres "$PGDATA_DIR"
trap 'rm -rf "$PGDATA_DIR"' EXIT
say "cargo pgrx test (unit tests and #[pg_test])"
cargo pgrx test pg15 --runas postgres --pgdata "$PGDATA_DIR/data"

say "installing the extension into PostgreSQL 15"
cargo pgrx install --pg-config /usr/bin/pg_config >/dev/null

say "SQL surface: pg_regress files (tests/pg_regress)"
tests/pg_regress/run.sh

say "claims under concurrency: isolation specs (tests/isolation)"
tests/isolation/run.sh

say "end-to-end suite"
"$PYTHON" -m pytest tests/e2e -q -p no:cacheprovider "$@"
