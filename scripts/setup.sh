#!/usr/bin/env bash
# Install what building and testing webhook needs; skips whatever is already present.
# Debian 12 with Rust; run as root (PostgreSQL itself runs as the postgres OS user).
set -euo pipefail

PGRX_VERSION=0.18.1
PG_CONFIG=/usr/bin/pg_config
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang sudo openssl)
PY_PACKAGES=(pytest "psycopg[binary]" standardwebhooks)

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
else
    say "apt packages present"
fi

if cargo pgrx --version 2>/dev/null | grep -q " ${PGRX_VERSION}\$"; then
    say "cargo-pgrx ${PGRX_VERSION} present"
else
    say "cargo install cargo-pgrx ${PGRX_VERSION} (takes about 5 minutes)"
    cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked --quiet
fi

PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
if grep -qs '^pg15 *=' "$PGRX_HOME/config.toml"; then
    say "cargo pgrx already initialised for PostgreSQL 15"
else
    say "cargo pgrx init --pg15 ${PG_CONFIG}"
    cargo pgrx init --pg15 "${PG_CONFIG}" >/dev/null
fi

if python3 -c 'import pytest, psycopg, standardwebhooks' 2>/dev/null; then
    say "python packages present"
else
    say "pip install ${PY_PACKAGES[*]}"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${PY_PACKAGES[@]}"
fi
