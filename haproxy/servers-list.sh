#!/usr/bin/env bash
# Writes the backend of haproxy.cfg for api replicas listed by address, for HAProxy run
# outside compose:
#   haproxy/servers-list.sh 10.0.0.5:8080 10.0.0.6:8080 > /etc/haproxy/servers.cfg
#   haproxy -f haproxy/haproxy.cfg -f /etc/haproxy/servers.cfg
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: haproxy/servers-list.sh HOST:PORT..." >&2
  exit 1
fi
echo "# The api replicas, written by haproxy/servers-list.sh."
echo "backend api from app"
n=0
for address in "$@"; do
  case "$address" in
    *:[0-9]*) ;;
    *) echo "haproxy/servers-list.sh: $address is not HOST:PORT" >&2; exit 1 ;;
  esac
  n=$((n + 1))
  echo "    server api$n $address"
done
