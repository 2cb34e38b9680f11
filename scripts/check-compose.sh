#!/usr/bin/env bash
# Checks the docker compose deployment without a Docker engine: docker-compose.yml (with and
# without the logging profile) through `docker-compose config`, which validates it against the
# Compose schema and resolves every variable, then elk/setup.sh against a local HTTP recorder:
# the requests it makes and that their bodies are valid JSON. Installs docker-compose (Debian's
# package) when it is missing. The log files and the field mapping are checked by the api's
# `elk` test. Needs vaticctl built (cargo build --workspace --bins).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/need.sh docker-compose docker-compose

docker-compose config -q
docker-compose --profile logging config -q
services="$(docker-compose --profile logging config --services | sort | tr '\n' ' ')"
expected="api certs elasticsearch elk-setup filebeat grafana haproxy kibana kibana-setup migrate nginx nginx-exporter postgres prometheus worker "
if [ "$services" != "$expected" ]; then
  echo "docker-compose.yml has services '$services', expected '$expected'" >&2
  exit 1
fi
# Published ports: nginx's 443 and 80, and Kibana's (profile logging) on loopback only; no
# password or key in the file, only the secrets' files.
docker-compose --profile logging config | python3 -c '
import sys, yaml
doc = yaml.safe_load(sys.stdin)
for name, service in doc["services"].items():
    for port in service.get("ports", []):
        if not isinstance(port, dict):
            parts = str(port).split(":")
            port = {"host_ip": parts[0] if len(parts) == 3 else "", "target": parts[-1].split("/")[0]}
        ok = (name == "nginx" and int(port["target"]) in (443, 80)) or (name == "kibana" and port.get("host_ip") == "127.0.0.1")
        assert ok, f"{name} publishes {port}: only nginx (443, 80) may, and Kibana on 127.0.0.1"
    for key, value in (service.get("environment") or {}).items():
        assert not any(w in key for w in ("PASSWORD", "ADMIN_KEY")) or key.endswith("_FILE") or key.endswith("__FILE"), f"{name}: {key} is set in the file; use a secret"
secrets = doc["secrets"]
assert sorted(secrets) == ["admin_key", "grafana_admin_password", "postgres_password"], secrets
assert all(s["file"].endswith("/secrets/" + n) for n, s in secrets.items()), secrets
assert doc["services"]["api"]["deploy"]["replicas"] == 2 and doc["services"]["worker"]["deploy"]["replicas"] == 2
'
echo "docker-compose.yml: valid, services $services; only nginx publishes ports; secrets from secrets/"

# HAProxy with the compose service's environment, on certificates made here in place of the
# certs volume (haproxy/servers-dns.cfg resolves the api replicas at run time only).
scripts/need.sh haproxy haproxy
vaticctl="${CARGO_TARGET_DIR:-target}/debug/vaticctl"
if [ ! -x "$vaticctl" ]; then
  echo "$vaticctl is missing: run cargo build --workspace --bins first" >&2
  exit 1
fi
(
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$vaticctl" certs init "$tmp/certs" >/dev/null
  env_args=()
  # The certs volume and the haproxy/ bind mount, where they are here.
  while IFS= read -r line; do
    line="${line//\/certs\//$tmp/certs/}"
    env_args+=("${line//\/usr\/local\/etc\/haproxy\//$PWD/haproxy/}")
  done < <(
    docker-compose config | python3 -c '
import sys, yaml
for k, v in yaml.safe_load(sys.stdin)["services"]["haproxy"]["environment"].items():
    print(f"{k}={v}")')
  env "${env_args[@]}" haproxy -c -f haproxy/haproxy.cfg -f haproxy/servers-dns.cfg >/dev/null
  echo "haproxy/: valid with the compose service's environment"
)

# scripts/compose-setup.sh in a copy: new secrets of 64 characters in a folder only its owner
# enters; the values of an earlier .env kept; nothing changed on a second run.
(
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir "$tmp/scripts"
  cp scripts/compose-setup.sh "$tmp/scripts/"
  cp .env.example "$tmp/"
  printf 'POSTGRES_PASSWORD="from-old-env"\n' >"$tmp/.env"
  "$tmp/scripts/compose-setup.sh" >/dev/null
  [ "$(cat "$tmp/secrets/postgres_password")" = from-old-env ]
  [ "$(wc -c <"$tmp/secrets/admin_key")" = 64 ] && [ "$(wc -c <"$tmp/secrets/grafana_admin_password")" = 64 ]
  [ "$(stat -c %a "$tmp/secrets")" = 700 ] && [ -d "$tmp/client" ]
  before="$(cat "$tmp"/secrets/*)"
  "$tmp/scripts/compose-setup.sh" >/dev/null
  [ "$(cat "$tmp"/secrets/*)" = "$before" ]
  echo "scripts/compose-setup.sh: secrets made, an earlier .env's kept, a second run changes nothing"
)

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
