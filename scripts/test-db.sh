#!/usr/bin/env bash
# Finds a PostgreSQL server for the tests and prints its admin URL (each test then makes and
# drops its own database on it):
#   1. $DATABASE_URL, when set;
#   2. a server on 127.0.0.1:5432 that takes user postgres without a password;
#   3. a throwaway cluster started from the installed PostgreSQL binaries (initdb, pg_ctl),
#      on a free port under ~/.cache/vatic/pg, stopped by `scripts/test-db.sh stop`;
#   4. otherwise it fails and says what to install.
set -euo pipefail

cache="${VATIC_CACHE:-$HOME/.cache/vatic}"
pgdata="$cache/pg/data"
port=55432

find_bin() {
  local name="$1"
  command -v "$name" 2>/dev/null && return 0
  ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -1
}

if [ "${1:-}" = "stop" ]; then
  pg_ctl="$(find_bin pg_ctl || true)"
  if [ -n "$pg_ctl" ] && [ -f "$pgdata/postmaster.pid" ]; then
    run=("$pg_ctl" -D "$pgdata" -m fast stop)
    if [ "$(id -u)" = 0 ]; then runuser -u nobody -- "${run[@]}" >/dev/null; else "${run[@]}" >/dev/null; fi
  fi
  exit 0
fi

if [ -n "${DATABASE_URL:-}" ]; then
  echo "$DATABASE_URL"
  exit 0
fi

psql="$(find_bin psql || true)"
probe() {
  # Succeeds when the URL accepts a connection.
  if [ -n "$psql" ]; then
    "$psql" "$1" -qAtc 'select 1' >/dev/null 2>&1
  else
    (exec 3<>"/dev/tcp/127.0.0.1/${2}") 2>/dev/null
  fi
}

if probe "postgres://postgres@127.0.0.1:5432/postgres" 5432; then
  echo "postgres://postgres@127.0.0.1:5432/postgres"
  exit 0
fi

initdb="$(find_bin initdb || true)"
pg_ctl="$(find_bin pg_ctl || true)"
if [ -z "$initdb" ] || [ -z "$pg_ctl" ]; then
  echo "no PostgreSQL for the tests: set DATABASE_URL, run one on 127.0.0.1:5432 (trust auth, user postgres)," >&2
  echo "or install the server binaries (Debian: apt-get install -y postgresql) so a throwaway cluster can be started" >&2
  exit 1
fi

# PostgreSQL refuses to run as root: use an unprivileged user for the throwaway cluster.
as_user=()
if [ "$(id -u)" = 0 ]; then
  as_user=(runuser -u nobody --)
fi
mkdir -p "$cache/pg"
if [ ! -f "$pgdata/PG_VERSION" ]; then
  rm -rf "$pgdata"
  mkdir -p "$pgdata"
  [ "$(id -u)" = 0 ] && chown -R nobody "$cache/pg"
  "${as_user[@]}" "$initdb" -D "$pgdata" -U postgres --auth=trust >/dev/null
fi
[ "$(id -u)" = 0 ] && chown -R nobody "$cache/pg"
url="postgres://postgres@127.0.0.1:$port/postgres"
if ! probe "$url" "$port"; then
  "${as_user[@]}" "$pg_ctl" -D "$pgdata" -l "$cache/pg/log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=/tmp -c max_connections=300" start >/dev/null
fi
echo "$url"
