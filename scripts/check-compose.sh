#!/usr/bin/env bash
# Checks the docker compose deployment without a Docker engine: docker-compose.yml (with and
# without the logging profile) through `docker-compose config`, which validates it against the
# Compose schema and resolves every variable, then elk/setup.sh against a local HTTP recorder:
# the requests it makes and that their bodies are valid JSON. Installs docker-compose (Debian's
# package) when it is missing. The log files and the field mapping are checked by the api's
# `elk` test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/need.sh docker-compose docker-compose

export POSTGRES_PASSWORD=check GRAFANA_ADMIN_PASSWORD=check VATIC_ADMIN_KEY=check-admin-key-0123456789abcdef
docker-compose config -q
docker-compose --profile logging config -q
services="$(docker-compose --profile logging config --services | sort | tr '\n' ' ')"
expected="api certs elasticsearch elk-setup filebeat grafana kibana kibana-setup migrate postgres prometheus worker "
if [ "$services" != "$expected" ]; then
  echo "docker-compose.yml has services '$services', expected '$expected'" >&2
  exit 1
fi
if POSTGRES_PASSWORD="" docker-compose config -q 2>/dev/null; then
  echo "docker-compose.yml starts without POSTGRES_PASSWORD" >&2
  exit 1
fi
echo "docker-compose.yml: valid, services $services"

bash -n elk/setup.sh
python3 - <<'PY'
import http.server, json, os, subprocess, threading

seen = []

class Recorder(http.server.BaseHTTPRequestHandler):
    def handle_one(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen.append((self.command, self.path, self.headers.get("kbn-xsrf"), json.loads(body)))
        answer = b'{"acknowledged": true}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    do_PUT = do_POST = handle_one
    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
threading.Thread(target=server.serve_forever, daemon=True).start()
url = f"http://127.0.0.1:{server.server_port}"
env = dict(os.environ, ELASTICSEARCH_URL=url, KIBANA_URL=url, LOG_RETENTION_DAYS="30")
for target in ["elasticsearch", "kibana"]:
    subprocess.run(["bash", "elk/setup.sh", target], env=env, check=True, stdout=subprocess.DEVNULL)
for bad in ["0", "two", "14d"]:
    r = subprocess.run(["bash", "elk/setup.sh", "elasticsearch"], capture_output=True,
                       env=dict(env, LOG_RETENTION_DAYS=bad))
    assert r.returncode != 0 and b"LOG_RETENTION_DAYS" in r.stderr, (bad, r)
assert subprocess.run(["bash", "elk/setup.sh"], capture_output=True).returncode == 2
server.shutdown()

paths = [(m, p) for m, p, _, _ in seen]
assert paths == [
    ("PUT", "/_ilm/policy/vatic-logs"),
    ("PUT", "/_index_template/vatic-logs"),
    ("POST", "/api/data_views/data_view"),
    ("POST", "/api/data_views/default"),
], paths
policy, template, view, default = (b for _, _, _, b in seen)
assert policy["policy"]["phases"]["delete"]["min_age"] == "30d", policy
assert template == json.load(open("elk/vatic-logs.index-template.json"))
assert template["template"]["settings"]["index.lifecycle.name"] == "vatic-logs"
assert view["data_view"]["title"] == template["index_patterns"][0], view
assert default["data_view_id"] == view["data_view"]["id"], default
assert all(x for _, p, x, _ in seen if p.startswith("/api/")), "Kibana calls carry kbn-xsrf"
print("elk/setup.sh: 4 requests with valid JSON bodies; bad LOG_RETENTION_DAYS refused")
PY
