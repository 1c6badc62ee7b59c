#!/usr/bin/env bash
# Install what building and testing webhook needs; skips whatever is already present, so running
# it again is cheap. For Debian 12 with Rust from rustup; run as root, needs no terminal
# (PostgreSQL itself runs as the postgres OS user).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=SCRIPTDIR/env.sh
. scripts/env.sh

PGRX_VERSION=0.18.1
PG_CONFIG=/usr/bin/pg_config
# pgrx 0.18.1 declares no rust-version (edition 2024 needs 1.85); what sets the floor are the
# locked dependencies: cargo-pgrx's Cargo.lock has time 0.3.47 (1.88), ours has uuid 1.29.3
# (1.89, a dependency of pgrx).
RUST_MIN=1.89
APT_PACKAGES=(
    gcc libc6-dev            # rustc links through cc; ring, cee-scape and pgrx's C shim compile C
    pkg-config libssl-dev    # cargo install cargo-pgrx builds openssl-sys, found through pkg-config
    clang libclang-dev       # bindgen (pgrx-pg-sys) parses PostgreSQL's headers with libclang
    postgresql-15            # the server; includes amcheck (test_queue.py) and pulls in
                             # postgresql-client-15 (psql, pgbench, pg_regress, pg_isolation_regress)
    postgresql-server-dev-15 # server headers and /usr/bin/pg_config to build against
    sudo                     # cargo pgrx test --runas postgres runs initdb and postgres via sudo
    openssl                  # the e2e tests call the openssl CLI (HMAC check, self-signed cert)
    ca-certificates          # cargo downloads crates over HTTPS with the system CA store
    python3 python3-venv     # /usr/bin/python3 and its venv module (with ensurepip) for .venv
)
PY_PACKAGES=(pytest "psycopg[binary]" standardwebhooks)
VENV=.venv

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[1m[setup]\033[0m error: %s\n' "$*" >&2; exit 1; }

# Rust: rustup's, not Debian's (too old); installing it is left to the user.
if ! command -v cargo >/dev/null; then
    die "cargo not found. Install Rust with rustup (https://rustup.rs):
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . \"\$HOME/.cargo/env\"
then run this again."
fi
if ! rustc_version=$("${RUSTC:-rustc}" --version 2>&1); then
    die "rustc does not run: ${rustc_version}
Install a toolchain with: rustup default stable"
fi
if [[ $rustc_version =~ ^rustc\ ([0-9]+)\.([0-9]+) ]]; then
    have=$((BASH_REMATCH[1] * 1000 + BASH_REMATCH[2]))
    need=$((${RUST_MIN%%.*} * 1000 + ${RUST_MIN#*.}))
    if ((have < need)); then
        die "${rustc_version} is too old: pgrx ${PGRX_VERSION} and this project's Cargo.lock need Rust ${RUST_MIN} or newer.
Update with: rustup update stable   (and, if another toolchain is the default: rustup default stable)"
    fi
    say "${rustc_version%% (*} (>= ${RUST_MIN})"
else
    die "cannot read the Rust version from: ${rustc_version}"
fi
# cargo fmt and clippy run in test.sh; pgrx's bindgen step formats with rustfmt. rustup's default
# profile has both, the minimal one does not.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null || die "rustfmt or clippy missing, and no rustup to add them"
    say "rustup component add rustfmt clippy"
    rustup component add rustfmt clippy
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    ((EUID == 0)) || die "missing packages ${missing[*]}: run this as root"
    say "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq "${missing[@]}" </dev/null >/dev/null
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

# Python packages live in ./.venv, made from Debian's python3: Debian's own interpreter refuses
# pip installs (EXTERNALLY-MANAGED) and another python3 (pyenv, ...) may be first on PATH.
# A venv that no longer runs, or was not made from /usr/bin/python3, is made again.
venv_ok() {
    "$PYTHON" -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null &&
        "$PYTHON" -m pip --version >/dev/null 2>&1
}
if "$PYTHON" -c 'import pytest, psycopg, standardwebhooks' 2>/dev/null && venv_ok; then
    say "python packages present in ${VENV}"
else
    if ! venv_ok; then
        [ -e "$VENV" ] && say "${VENV} does not work or was not made from /usr/bin/python3; making it again"
        rm -rf "$VENV"
        say "/usr/bin/python3 -m venv ${VENV}"
        /usr/bin/python3 -m venv "$VENV"
    fi
    say "pip install ${PY_PACKAGES[*]} (into ${VENV})"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" </dev/null
fi
