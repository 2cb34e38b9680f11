#!/usr/bin/env bash
# The production stack end to end on this machine: nginx and HAProxy (Debian's packages,
# installed when missing) from the files in nginx/ and haproxy/, two api replicas and two
# workers over TLS with API keys, a PostgreSQL cluster of its own (from the installed
# PostgreSQL binaries), then load through all of it while a worker is killed, an api replica
# restarted and PostgreSQL stopped (scripts/e2e/run.py says what it checks). Prints a table
# per phase; fails when any client request failed or the prediction log does not match.
# Needs the Rust toolchain, python3 with venv, and the PostgreSQL server binaries. About 3
# minutes once built.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/need.sh nginx nginx
scripts/need.sh haproxy haproxy
scripts/need.sh envsubst gettext-base
scripts/need.sh curl curl
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  scripts/need.sh initdb postgresql
fi
command -v psql >/dev/null || ls /usr/lib/postgresql/*/bin/psql >/dev/null 2>&1 || scripts/need.sh psql postgresql-client

cargo build --workspace --bins
target="${CARGO_TARGET_DIR:-target}/debug"

venv="${VATIC_VENV:-$HOME/.cache/vatic/venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/interop/requirements.txt
"$venv/bin/python" scripts/e2e/run.py --bin "$target" "$@"
