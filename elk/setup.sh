#!/usr/bin/env bash
# Loads what the compose profile "logging" needs, and may run any number of times:
#   setup.sh elasticsearch   the retention policy and the index template (the field mapping)
#   setup.sh kibana          the "vatic logs" data view, made Kibana's default
# ELASTICSEARCH_URL, KIBANA_URL and LOG_RETENTION_DAYS (default 14) say where and how long.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
es="${ELASTICSEARCH_URL:-http://elasticsearch:9200}"
kibana="${KIBANA_URL:-http://kibana:5601}"
days="${LOG_RETENTION_DAYS:-14}"

# Sends a JSON body, fails with the server's answer when it is not a 2xx.
send() {
  local method="$1" url="$2" body="$3" answer status
  shift 3
  answer="$(curl -sS -o - -w '\n%{http_code}' -X "$method" "$url" \
    -H 'Content-Type: application/json' "$@" --data-binary "$body")"
  status="${answer##*$'\n'}"
  if [[ "$status" != 2* ]]; then
    echo "$method $url answered $status: ${answer%$'\n'*}" >&2
    return 1
  fi
  echo "$method $url: $status"
}

case "${1:-}" in
  elasticsearch)
    if ! [[ "$days" =~ ^[1-9][0-9]*$ ]]; then
      echo "LOG_RETENTION_DAYS must be a whole number of days (1 or more), not '$days'" >&2
      exit 1
    fi
    policy="$(sed "s/@LOG_RETENTION_DAYS@/${days}/" "$here/vatic-logs.ilm-policy.json")"
    send PUT "$es/_ilm/policy/vatic-logs" "$policy"
    send PUT "$es/_index_template/vatic-logs" "@$here/vatic-logs.index-template.json"
    ;;
  kibana)
    send POST "$kibana/api/data_views/data_view" "@$here/kibana-data-view.json" -H 'kbn-xsrf: vatic'
    send POST "$kibana/api/data_views/default" '{"data_view_id": "vatic-logs", "force": true}' \
      -H 'kbn-xsrf: vatic'
    ;;
  *)
    echo "usage: $0 elasticsearch|kibana" >&2
    exit 2
    ;;
esac
