#!/usr/bin/env bash
# The demo: build and install webhook, start a throwaway cluster with the worker and a receiver
# on 127.0.0.1, change some rows and print the signed webhooks that arrive.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/env.sh
. scripts/env.sh
./scripts/setup.sh
printf '\033[1m[demo]\033[0m building and installing the extension\n'
cargo pgrx install --release --pg-config /usr/bin/pg_config >/dev/null
exec "$PYTHON" demo/demo.py
