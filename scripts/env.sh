# Sourced (not run) by the other scripts after they cd to the repository root: where cargo and
# Python are.
# shellcheck shell=bash

# rustup puts cargo in ~/.cargo/bin; a non-login shell (CI) may not have sourced ~/.cargo/env.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
    export PATH
fi

# Every Python run goes through the repository's virtual environment, which scripts/setup.sh
# creates from Debian's /usr/bin/python3 (never whichever python3 is first on PATH).
PYTHON="$PWD/.venv/bin/python"
export PYTHON
