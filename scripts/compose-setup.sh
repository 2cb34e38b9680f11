#!/usr/bin/env bash
# Prepares this folder for `docker compose up`, once: the compose secrets in secrets/ (the
# PostgreSQL password, the first admin key, Grafana's admin password), each a new random value,
# client/ for the CA's certificate the stack exports, and .env from .env.example. Keeps every
# file that exists, so running it again changes nothing.
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
mkdir -p secrets
chmod 0700 secrets
for name in postgres_password admin_key grafana_admin_password; do
  if [ ! -s "secrets/$name" ]; then
    random >"secrets/$name"
    chmod 0644 "secrets/$name"
    echo "secrets/$name: made"
  else
    echo "secrets/$name: kept"
  fi
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
