#!/usr/bin/env bash
# Checks prometheus/: the scrape config and alert rules with promtool, then the rules' unit
# tests and the Grafana dashboards' queries. Installs promtool (Debian's prometheus package)
# when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  scripts/need.sh promtool prometheus
  # The package starts a Prometheus server; the checks need only promtool.
  systemctl stop prometheus >/dev/null 2>&1 || sudo systemctl stop prometheus >/dev/null 2>&1 || true
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# promtool checks that the client certificate and key files of each tls_config exist, and the
# scrape config names them where docker-compose.yml mounts the `certs` volume (/certs): check a
# copy whose /certs/ paths lead to files in a temporary folder.
cp prometheus/*.yml "$work/"
sed -i "s#/certs/#$work/certs/#g" "$work/prometheus.yml"
mkdir "$work/certs"
grep -o "$work/certs/[A-Za-z0-9._-]*" "$work/prometheus.yml" | sort -u | xargs touch
promtool check config "$work/prometheus.yml"
promtool check rules prometheus/alerts.yml
promtool test rules prometheus/alerts_test.yml

# Every query of the Grafana dashboards parses: each becomes a recording rule that promtool
# checks (Grafana's variables replaced by values).
rules="$work/dashboards.yml"
python3 - "$rules" grafana/dashboards/*.json <<'PY'
import json, sys
out, files = sys.argv[1], sys.argv[2:]
rules = []
for path in files:
    for panel in json.load(open(path))["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$__rate_interval", "5m").replace("$model", ".*")
            rules.append({"record": f"dashboard:query:{len(rules)}", "expr": expr})
json.dump({"groups": [{"name": "dashboards", "rules": rules}]}, open(out, "w"))
print(f"{len(rules)} dashboard queries from {len(files)} dashboards")
PY
promtool check rules "$rules"
