#!/usr/bin/env bash
# Checks prometheus/: the scrape config and alert rules with promtool, then the rules' unit
# tests. Installs promtool (Debian's prometheus package) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null 2>&1; then
  scripts/need.sh promtool prometheus
  # The package starts a Prometheus server; the checks need only promtool.
  systemctl stop prometheus >/dev/null 2>&1 || sudo systemctl stop prometheus >/dev/null 2>&1 || true
fi

promtool check config prometheus/prometheus.yml
promtool check rules prometheus/alerts.yml
promtool test rules prometheus/alerts_test.yml

# Every query of the Grafana dashboards parses: each becomes a recording rule that promtool
# checks (Grafana's variables replaced by values).
rules="$(mktemp --suffix .yml)"
trap 'rm -f "$rules"' EXIT
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
