#!/usr/bin/env bash
# Prepares this folder for `docker compose up`, once: the compose secrets in secrets/ (the
# PostgreSQL password, the first admin key, Grafana's admin password), each a new random value,
# client/ for the CA's certificate the stack exports, and .env from .env.example. Keeps every
# file that exists, so running it again changes nothing. A .env of an earlier vatic that holds
# POSTGRES_PASSWORD, VATIC_ADMIN_KEY or GRAFANA_ADMIN_PASSWORD gives those secrets their
# values, so an existing database and Grafana keep working.
#
#   scripts/compose-setup.sh && docker compose up -d
set -euo pipefail
cd "$(dirname "$0")/.."

random() {
  # 32 random bytes as 64 hexadecimal characters: safe in URLs, headers and shells.
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

# The folder keeps other users of this host out; the files inside are readable by all, because
# compose mounts each into its container as it is, where services run as users of their own
# (vatic 10001, postgres, grafana 472).
from_env() {
  # The value of $1 in an existing .env, without quotes; empty when absent.
  [ -f .env ] || return 0
  sed -n "s/^$1=//p" .env | tail -n 1 | sed -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'$/\1/"
}

mkdir -p secrets
chmod 0700 secrets
for pair in postgres_password:POSTGRES_PASSWORD admin_key:VATIC_ADMIN_KEY \
  grafana_admin_password:GRAFANA_ADMIN_PASSWORD; do
  name="${pair%%:*}" old="${pair#*:}"
  if [ -s "secrets/$name" ]; then
    echo "secrets/$name: kept"
    continue
  fi
  value="$(from_env "$old")"
  if [ -n "$value" ]; then
    printf '%s' "$value" >"secrets/$name"
    echo "secrets/$name: from $old in .env (remove it from .env)"
  else
    random >"secrets/$name"
    echo "secrets/$name: made"
  fi
  chmod 0644 "secrets/$name"
done

mkdir -p client
if [ ! -e .env ]; then
  cp .env.example .env
  echo ".env: made from .env.example"
else
  echo ".env: kept"
fi

cat <<MSG

Next:
  docker compose up -d
  export VATIC_API_KEY="\$(cat secrets/admin_key)"   # the first admin key
  curl --cacert client/ca.crt -H "Authorization: Bearer \$VATIC_API_KEY" https://localhost/v2/health/ready
See docs/deployment.md.
MSG
