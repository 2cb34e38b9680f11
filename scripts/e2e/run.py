"""The production stack end to end, natively, on loopback: nginx -> HAProxy -> two api replicas
-> two workers -> PostgreSQL, every hop over TLS with the certificates of `vaticctl certs init`,
nginx and HAProxy from the very files compose runs (nginx/, haproxy/), API keys required.

It checks the edge (redirect, request ids, nginx's own errors in vatic's JSON shape, the
metrics endpoints), runs Triton's Python client over SSL through it, then sends load in four
phases of about 20 s each: vaticctl bench at c=32, tritonclient (V2 JSON and binary tensors)
and curl (TF-Serving REST) side by side, while
  1. nothing fails,
  2. one worker is killed with kill -9,
  3. one api replica gets SIGTERM and is started again,
  4. PostgreSQL is stopped for 10 s and started again.
It asserts that no client request failed in any phase, that HAProxy took the draining replica
out of its pool before it stopped, and that once the prediction-log spools are drained the log
holds exactly one row per successful request. It prints a table per phase.

Its PostgreSQL is a cluster of its own, made with the installed PostgreSQL binaries (the ones
the tests use) on a free loopback port: phase 4 stops it, which must not take away the
server other tests and people use.

Usage: run.py --bin TARGET_DIR [--seconds 20] [--concurrency 32]
(run with the Python that has tritonclient; scripts/e2e.sh sets everything up)
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "interop"))
import triton_client as interop  # noqa: E402  (Triton's client, the checks of the interop run)

MODEL = "breast_cancer"
ADMIN_KEY = "e2e-admin-key-0123456789abcdefghij"


def log(msg):
    print(f"e2e: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name):
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"),
                      key=lambda p: [int(x) for x in re.findall(r"\d+", p.parts[-3])])
    if not versions:
        raise SystemExit(f"e2e: {name} not found: install the PostgreSQL server binaries "
                         "(Debian: apt-get install -y postgresql)")
    return str(versions[-1])


class Postgres:
    """A PostgreSQL cluster of the test's own, which it may stop and start."""

    def __init__(self, work):
        self.dir = work / "pg"
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self.as_user = []
        self.dir.mkdir()
        if os.getuid() == 0:
            # PostgreSQL refuses to run as root.
            self.as_user = ["runuser", "-u", "nobody", "--"]
            shutil.chown(self.dir, "nobody")
            os.chmod(work, 0o755)
        self.run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust")
        self.start()

    def run(self, *cmd):
        subprocess.run([*self.as_user, *cmd], check=True, stdout=subprocess.DEVNULL)

    def start(self):
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.dir}"
                " -c max_connections=200 -c fsync=off")
        self.run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o", opts, "start")

    def stop(self):
        self.run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def query(self, sql):
        out = subprocess.run([pg_bin("psql"), self.url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()


class Proc:
    """A process of the stack, its output in a file of the work folder."""

    def __init__(self, name, cmd, work, env=None, cwd=None):
        self.name, self.cmd, self.env = name, cmd, dict(os.environ, **(env or {}))
        self.cwd = cwd or work
        self.out_path = work / f"{name}.log"
        self.start()

    def start(self):
        self.out = open(self.out_path, "a")
        self.popen = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=self.out,
                                      stderr=subprocess.STDOUT)

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        self.popen.send_signal(sig)

    def wait(self, timeout):
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"e2e: {self.name} did not stop within {timeout} s: see {self.out_path}")

    def stop(self):
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.out.close()

    def wait_for_line(self, pattern, timeout=120, after=0):
        """The first JSON log line at or past byte `after` whose message is `pattern`."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            with open(self.out_path) as f:
                f.seek(after)
                for line in f:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    if event.get("message") == pattern:
                        return event
            if not self.alive():
                break
            time.sleep(0.1)
        raise SystemExit(f"e2e: {self.name} did not log '{pattern}': see {self.out_path}")


def tls_context(ca, cert=None, key=None):
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def call(url, method="GET", body=None, headers=None, ctx=None, timeout=30):
    """(status, headers as a dict with lower-case names, body) of one request; a header sent
    twice has its values joined with ", ", so that a duplicate shows."""
    scheme, rest = url.split("://", 1)
    host, _, path = rest.partition("/")
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=headers or {})
        r = conn.getresponse()
        headers = {}
        for k, v in r.getheaders():
            k = k.lower()
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        return r.status, headers, r.read()
    finally:
        conn.close()


def expect(cond, what):
    if not cond:
        raise SystemExit(f"e2e: FAILED: {what}")


class Stack:
    def __init__(self, args, work):
        self.a, self.work = args, work
        self.bin = Path(args.bin).resolve()
        self.certs = work / "certs"
        self.ca = self.certs / "ca.crt"
        self.reference = json.loads((ROOT / "models" / MODEL / "reference.json").read_text())
        self.procs = []
        self.pg = None

    # --- starting the stack -------------------------------------------------------------

    def ctl(self, *args, server=None, key=ADMIN_KEY, check=True):
        env = dict(os.environ, VATIC_SERVER=server or self.edge, VATIC_CACERT=str(self.ca))
        if key:
            env["VATIC_API_KEY"] = key
        done = subprocess.run([str(self.bin / "vaticctl"), *args], env=env, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise SystemExit(f"e2e: vaticctl {' '.join(args)} failed: {done.stderr}")
        return done

    def vatic_env(self):
        return {"VATIC_DATABASE__URL": self.pg.url, "VATIC_LOG__FORMAT": "json", "RUST_LOG": "info"}

    def start_worker(self, n):
        home = self.work / f"worker-{n}"
        home.mkdir(exist_ok=True)
        env = {**self.vatic_env(),
               "VATIC_TLS__CERT": str(self.certs / "worker.crt"),
               "VATIC_TLS__KEY": str(self.certs / "worker.key"),
               "VATIC_TLS__CLIENT_CA": str(self.ca)}
        p = Proc(f"worker-{n}", [str(self.bin / "vatic-worker"), "--config", str(ROOT / "config/worker.toml"),
                                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
                 self.work, env, cwd=home)
        self.procs.append(p)
        p.addr = p.wait_for_line("worker listening")["addr"]
        return p

    def start_api(self, n, port):
        home = self.work / f"api-{n}"
        home.mkdir(exist_ok=True)
        env = {**self.vatic_env(),
               "VATIC_WORKERS": "[]",
               "VATIC_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
               "VATIC_TLS__CERT": str(self.certs / "api.crt"),
               "VATIC_TLS__KEY": str(self.certs / "api.key"),
               "VATIC_WORKER_TLS__CA": str(self.ca),
               "VATIC_WORKER_TLS__CERT": str(self.certs / "api-client.crt"),
               "VATIC_WORKER_TLS__KEY": str(self.certs / "api-client.key"),
               # As the compose file: idle connections outlive HAProxy's.
               "VATIC_KEEP_ALIVE_SECS": "300"}
        p = Proc(f"api-{n}", [str(self.bin / "vatic-api"), "--config", str(ROOT / "config/api.toml"),
                              "--listen", f"127.0.0.1:{port}", "--metrics-listen", "127.0.0.1:0"],
                 self.work, env, cwd=home)
        self.procs.append(p)
        p.wait_for_line("api listening")
        p.url = f"https://127.0.0.1:{port}"
        return p

    def restart(self, p):
        """Starts `p` again with its command, waiting for its new 'api listening' line."""
        offset = p.out_path.stat().st_size
        p.out.close()
        p.start()
        p.wait_for_line("api listening", after=offset)

    def check_script_errors(self):
        """The helper scripts refuse what would make a broken config, and say why."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("NGINX_")}
        out = subprocess.run([str(ROOT / "nginx/render.sh"), str(self.work / "unrendered")],
                             env=dict(env, NGINX_RATE="1r/s"), capture_output=True, text=True)
        expect(out.returncode == 1 and "NGINX_ACCESS_LOG is not set (vatic.conf.template uses it)" in out.stderr
               and not list((self.work / "unrendered").glob("*.conf")),
               f"render.sh refuses a template variable that is not set: {out}")
        out = subprocess.run([str(ROOT / "haproxy/servers-list.sh"), "127.0.0.1:8080", "api-2"],
                             capture_output=True, text=True)
        expect(out.returncode == 1 and "api-2 is not HOST:PORT" in out.stderr,
               f"servers-list.sh refuses an address without a port: {out}")
        log("render.sh and servers-list.sh refuse bad input")

    def start_haproxy(self):
        self.lb_port, self.lb_stats, self.lb_metrics = self.run_haproxy("haproxy", [a.url.split("//")[1] for a in self.apis])
        wait_until(lambda: self.haproxy_status("api1") == "UP" and self.haproxy_status("api2") == "UP",
                   60, "HAProxy sees both api replicas up")

    def run_haproxy(self, name, servers):
        """HAProxy from haproxy/ in front of `servers` (host:port); its three ports."""
        ports = free_port(), free_port(), free_port()
        listed = self.work / f"{name}-servers.cfg"
        listed.write_text(subprocess.run([str(ROOT / "haproxy/servers-list.sh"), *servers],
                                         check=True, capture_output=True, text=True).stdout)
        env = {"HAPROXY_HTTPS_BIND": f"127.0.0.1:{ports[0]}",
               "HAPROXY_CERT": str(self.certs / "haproxy.crt"),
               "HAPROXY_STATS_BIND": f"127.0.0.1:{ports[1]}",
               "HAPROXY_METRICS_BIND": f"127.0.0.1:{ports[2]}",
               "VATIC_CA": str(self.ca),
               "VATIC_API_TLS_NAME": "api",
               "HAPROXY_ERRORS": str(ROOT / "haproxy" / "errors")}
        cmd = ["haproxy", "-db", "-f", str(ROOT / "haproxy/haproxy.cfg"), "-f", str(listed)]
        checked = subprocess.run([*cmd[:1], "-c", *cmd[2:]], env=dict(os.environ, **env), capture_output=True, text=True)
        expect(checked.returncode == 0, f"haproxy -c: {checked.stdout}{checked.stderr}")
        log(f"haproxy -c ({name}): configuration valid")
        self.procs.append(Proc(name, cmd, self.work, env))
        wait_until(lambda: port_open(ports[0]), 30, f"{name} listens")
        return ports

    def haproxy_status(self, server):
        try:
            status, _, body = call(f"http://127.0.0.1:{self.lb_stats}/stats;csv", timeout=5)
        except OSError:
            return None
        if status != 200:
            return None
        lines = body.decode().splitlines()
        head = lines[0].lstrip("# ").split(",")
        for line in lines[1:]:
            row = dict(zip(head, line.split(",")))
            if row.get("pxname") == "api" and row.get("svname") == server:
                return row.get("status")
        return None

    def render_nginx(self, name, **overrides):
        """nginx from nginx/templates, rendered by nginx/render.sh; returns its ports."""
        home = self.work / name
        (home / "conf.d").mkdir(parents=True)
        (home / "tmp").mkdir()
        (home / "locations").mkdir()
        os.chmod(home / "tmp", 0o777)
        ports = {"https": free_port(), "http": free_port(), "status": free_port()}
        env = {"NGINX_HTTPS_LISTEN": f"127.0.0.1:{ports['https']}",
               "NGINX_HTTP_LISTEN": f"127.0.0.1:{ports['http']}",
               "NGINX_REDIRECT_PORT": f":{ports['https']}",
               "NGINX_STATUS_LISTEN": f"127.0.0.1:{ports['status']}",
               "NGINX_CERT": str(self.certs / "nginx.crt"),
               "NGINX_KEY": str(self.certs / "nginx.key"),
               "NGINX_UPSTREAM": f"127.0.0.1:{self.lb_port}",
               "NGINX_UPSTREAM_NAME": "haproxy",
               "NGINX_UPSTREAM_CA": str(self.ca),
               "NGINX_MAX_BODY_SIZE": "64m",
               "NGINX_MAX_MODEL_SIZE": "2g",
               "NGINX_MAX_BATCH_SIZE": "16g",
               "NGINX_RATE": "100000r/s",
               "NGINX_BURST": "100000",
               "NGINX_ACCESS_LOG": str(home / "access.log"),
               "NGINX_LOCATIONS": str(home / "locations" / "*.conf"),
               **overrides}
        subprocess.run([str(ROOT / "nginx/render.sh"), str(home / "conf.d")], env=dict(os.environ, **env), check=True)
        user = "user nobody nogroup;\n" if os.getuid() == 0 else ""
        temp = "\n".join(f"  {kind}_temp_path {home}/tmp/{kind};" for kind in
                         ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
        (home / "nginx.conf").write_text(
            f"{user}daemon off;\npid {home}/nginx.pid;\nerror_log stderr warn;\nworker_processes 2;\n"
            f"events {{ worker_connections 4096; }}\n"
            f"http {{\n  include /etc/nginx/mime.types;\n{temp}\n  include {home}/conf.d/*.conf;\n}}\n")
        checked = subprocess.run(["nginx", "-t", "-c", str(home / "nginx.conf"), "-e", "stderr"],
                                 capture_output=True, text=True)
        expect(checked.returncode == 0, f"nginx -t: {checked.stderr}")
        log(f"nginx -t ({name}): configuration valid")
        p = Proc(name, ["nginx", "-c", str(home / "nginx.conf"), "-e", "stderr"], self.work)
        self.procs.append(p)
        wait_until(lambda: port_open(ports["https"]), 30, f"{name} listens")
        return ports, home

    def start(self):
        log(f"work folder {self.work}")
        self.pg = Postgres(self.work)
        log(f"PostgreSQL cluster on 127.0.0.1:{self.pg.port}")
        self.ctl("certs", "init", str(self.certs), server="http://127.0.0.1:1", key=None)
        migrate = subprocess.run([str(self.bin / "vaticctl"), "migrate", "--database-url", self.pg.url],
                                 capture_output=True, text=True)
        expect(migrate.returncode == 0, f"vaticctl migrate: {migrate.stderr}")
        self.workers = [self.start_worker(1), self.start_worker(2)]
        self.apis = [self.start_api(1, free_port()), self.start_api(2, free_port())]
        log("2 workers and 2 api replicas up")
        self.check_script_errors()
        self.start_haproxy()
        ports, self.nginx_home = self.render_nginx("nginx")
        self.edge = f"https://127.0.0.1:{ports['https']}"
        self.edge_http = f"http://127.0.0.1:{ports['http']}"
        self.nginx_status = f"http://127.0.0.1:{ports['status']}"
        log(f"edge at {self.edge}")
        self.ctl("models", "push", MODEL, str(ROOT / "models" / MODEL / "1" / "model.onnx"))
        self.predictor = self.ctl("keys", "create", "--role", "predictor", "--models", MODEL,
                                  "--name", "e2e").stdout.strip()
        ctx = tls_context(self.ca, self.certs / "api-client.crt", self.certs / "api-client.key")
        for w in self.workers:
            wait_until(lambda: call(f"https://{w.addr}/v2/models/{MODEL}/ready", ctx=ctx)[0] == 200,
                       120, f"{w.name} has loaded {MODEL}")
        self.wait_api_sees_workers(self.workers)

    def wait_api_sees_workers(self, workers):
        """Until `workers` have the model ready in the fleet table, and every api replica has
        read it (it reads the table every fleet_refresh_ms, 1 s)."""
        ctx = tls_context(self.ca)
        want = {f"https://{w.addr}" for w in workers}

        def listed():
            status, _, out = call(f"{self.apis[0].url}/admin/v1/workers", headers=self.auth(ADMIN_KEY), ctx=ctx)
            ready = {w["address"] for w in json.loads(out)
                     if any(v.get("model") == MODEL and v.get("state") == "READY" for v in w["loaded"])}
            return status == 200 and want <= ready
        wait_until(listed, 120, f"the fleet table lists {sorted(want)} with {MODEL} ready")
        for api in self.apis:
            wait_until(lambda: call(f"{api.url}/v2/models/{MODEL}/ready", headers=self.auth(), ctx=ctx)[0] == 200,
                       60, f"{api.name} has a worker for {MODEL}")
        time.sleep(2.5)

    def stop(self):
        for p in reversed(self.procs):
            p.stop()
        if self.pg:
            try:
                self.pg.stop()
            except subprocess.CalledProcessError:
                pass

    # --- checks of the edge -------------------------------------------------------------

    def auth(self, key=None):
        return {"Authorization": f"Bearer {key or self.predictor}"}

    def check_edge(self):
        ctx = tls_context(self.ca)
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                       "data": self.reference["inputs"][0]}]})
        infer = f"/v2/models/{MODEL}/infer"
        headers = {**self.auth(), "Content-Type": "application/json"}

        status, h, _ = call(f"{self.edge_http}{infer}?x=1", "POST", body, headers)
        expect(status == 308 and h.get("location") == f"{self.edge}{infer}?x=1",
               f"plain HTTP is redirected to HTTPS (got {status} {h.get('location')})")

        status, h, out = call(f"{self.edge}{infer}", "POST", body, {**headers, "X-Request-ID": "e2e-given-id"}, ctx)
        expect(status == 200, f"inference through the edge: {status} {out[:200]}")
        expect(h.get("x-request-id") == "e2e-given-id", f"the client's X-Request-ID is kept: {h}")
        expect(h.get("strict-transport-security") == "max-age=31536000", f"one HSTS header: {h}")
        probs = json.loads(out)["outputs"]
        expect(any(o["name"] == "probabilities" for o in probs), "outputs named")
        status, h, _ = call(f"{self.edge}{infer}", "POST", body, headers, ctx)
        made = h.get("x-request-id", "")
        expect(re.fullmatch(r"[0-9a-f]{32}", made), f"nginx gives a request id when none is sent: {made!r}")
        wait_until(lambda: made in (self.nginx_home / "access.log").read_text(), 10,
                   "nginx's access log line carries the request id")
        line = next(json.loads(x) for x in (self.nginx_home / "access.log").read_text().splitlines() if made in x)
        expect(line["status"] == 200 and line["upstream_status"] == "200" and line["tls"] in ("TLSv1.3", "TLSv1.2"),
               f"nginx's JSON access line: {line}")
        wait_until(lambda: any(made in p.out_path.read_text() for p in self.apis), 10,
                   "an api replica logs the request with nginx's request id")

        status, _, out = call(f"{self.edge}{infer}", "POST", body, {"Content-Type": "application/json"}, ctx)
        expect(status == 401 and "error" in json.loads(out), f"no key: 401 from the api ({status} {out[:200]})")

        status, _, out = call(f"{self.nginx_status}/stub_status")
        expect(status == 200 and b"Active connections" in out, "nginx stub_status answers on its port")
        status, _, out = call(f"http://127.0.0.1:{self.lb_metrics}/metrics")
        expect(status == 200, f"HAProxy's Prometheus endpoint: {status}")
        exported = set(re.findall(r"^(haproxy_[a-z_]+)", out.decode(), re.M))
        used = set()
        for dashboard in (ROOT / "grafana" / "dashboards").glob("*.json"):
            used |= set(re.findall(r"haproxy_[a-z_]+", dashboard.read_text()))
        expect(used and used <= exported, f"HAProxy exports the metrics the dashboards use: {used - exported}")

        # nginx's own refusals, from the same template with a tight limit and a small body size.
        ports, _ = self.render_nginx("nginx-tight", NGINX_RATE="1r/m", NGINX_BURST="1", NGINX_MAX_BODY_SIZE="1k")
        tight = f"https://127.0.0.1:{ports['https']}"
        status, _, out = call(f"{tight}{infer}", "POST", "x" * 4096, headers, ctx)
        expect(status == 413 and "larger than the edge allows (1k;" in json.loads(out)["error"],
               f"an oversized body: 413 in JSON ({status} {out[:200]})")
        statuses = []
        for _ in range(4):
            status, h, out = call(f"{tight}{infer}", "POST", body, headers, ctx)
            statuses.append(status)
        expect(statuses.count(429) >= 2 and h.get("retry-after") == "1" and
               "the edge allows 1r/m" in json.loads(out)["error"],
               f"over the per-address limit: 429 in JSON with Retry-After ({statuses}, {out[:200]})")
        # HAProxy's own refusal, in JSON: one whose only api replica is a closed port.
        closed = free_port()
        lonely, _, _ = self.run_haproxy("haproxy-without-api", [f"127.0.0.1:{closed}"])
        status, h, out = call(f"https://127.0.0.1:{lonely}{infer}", "POST", body, headers,
                              tls_context(self.ca))
        expect(status == 503 and h.get("retry-after") == "1" and "no api replica is ready" in json.loads(out)["error"],
               f"HAProxy without a replica: 503 in JSON ({status} {out[:200]})")
        log("edge: redirect, request ids, HSTS, 401, 413, 429, HAProxy's 503, stub_status and HAProxy metrics as expected")

        results = []
        url = self.edge.split("//")[1]
        interop.check("through nginx and HAProxy", url, self.reference, results, headers=self.auth(),
                      **interop.https_options(self.ca))
        failed = [(n, e) for n, e in results if e is not None]
        for name, err in results:
            log(f"tritonclient {name}: {'ok' if err is None else f'FAILED {err!r}'}")
        expect(not failed, f"tritonclient through the edge: {failed}")

    # --- load with faults ---------------------------------------------------------------

    def phase(self, name, fault=None):
        seconds = self.a.seconds
        env = dict(os.environ, VATIC_API_KEY=self.predictor)
        bench = subprocess.Popen(
            [str(self.bin / "vaticctl"), "--server", self.edge, "--cacert", str(self.ca), "bench", MODEL,
             "-c", str(self.a.concurrency), "-d", f"{seconds}s", "--warmup", "0s", "-o", "json"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        triton = subprocess.Popen(
            [sys.executable, __file__, "--triton-load", self.edge.split("//")[1], "--ca", str(self.ca),
             "--key", self.predictor, "--seconds", str(seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        curl = CurlLoad(self, seconds)
        try:
            notes = fault() if fault else ""
            out, err = bench.communicate(timeout=seconds + 120)
            t_out, t_err = triton.communicate(timeout=seconds + 120)
        finally:
            for child in (bench, triton):
                if child.poll() is None:
                    child.kill()
                    child.wait()
        expect(bench.returncode == 0, f"vaticctl bench in phase '{name}': {err}")
        level = json.loads(out)[0]
        expect(triton.returncode == 0, f"tritonclient load in phase '{name}': {t_err}")
        t = json.loads(t_out)
        curl.join()
        errors = {}
        for source, errs in [("bench", level["errors"]), ("tritonclient", t["errors"]), ("curl", curl.errors)]:
            for k, v in errs.items():
                errors[f"{source} {k}"] = v
        row = {"phase": name, "bench": level["requests"], "bench_ok": level["succeeded"],
               "p50_ms": level["latency_us"]["p50"] / 1000 if level.get("latency_us") else None,
               "p99_ms": level["latency_us"]["p99"] / 1000 if level.get("latency_us") else None,
               "triton_ok": t["ok"], "curl_ok": curl.ok, "errors": errors, "notes": notes}
        row["ok"] = row["bench_ok"] + t["ok"] + curl.ok
        log(f"phase '{name}': {row['ok']} answered, errors {errors or 'none'} {notes}")
        return row

    def kill_worker(self):
        time.sleep(self.a.seconds * 0.3)
        victim = self.workers[0]
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        return f"({victim.name} killed -9 at {self.a.seconds * 0.3:.0f} s)"

    def restart_api(self):
        time.sleep(self.a.seconds * 0.25)
        api = self.apis[0]
        sent = time.time()
        api.signal(signal.SIGTERM)
        out_of_pool = None
        while api.alive():
            expect(time.time() - sent < 90, f"{api.name} stopped within 90 s of SIGTERM")
            if out_of_pool is None and (self.haproxy_status("api1") or "").startswith(("DOWN", "NOLB", "MAINT")):
                out_of_pool = time.time() - sent
            time.sleep(0.1)
        stopped = time.time() - sent
        self.drain = (out_of_pool, stopped)
        self.restart(api)
        wait_until(lambda: self.haproxy_status("api1") == "UP", 60, "HAProxy takes api1 back")
        back = time.time() - sent
        return (f"(api-1: SIGTERM; out of HAProxy's pool after {out_of_pool or float('nan'):.1f} s, "
                f"exited after {stopped:.1f} s, back in the pool after {back:.1f} s)")

    def postgres_away(self):
        time.sleep(self.a.seconds * 0.2)
        self.pg.stop()
        time.sleep(10)
        self.pg.start()
        return "(PostgreSQL stopped for 10 s)"

    def logged_rows(self):
        return self.pg.query(f"SELECT count(*), count(DISTINCT request_id) FROM predictions WHERE model = '{MODEL}'")

    def log_counters(self, api):
        """The prediction-log counters of one api replica (since it started)."""
        status, _, out = call(f"{api.url}/admin/v1/prediction-log", headers=self.auth(ADMIN_KEY),
                              ctx=tls_context(self.ca))
        expect(status == 200, f"{api.name}: GET /admin/v1/prediction-log: {status} {out[:200]}")
        return json.loads(out)

    def spools_empty(self):
        return all(not c["queue_depth"] and not c["spool_bytes"]
                   for c in (self.log_counters(api) for api in self.apis))

    def run(self):
        self.start()
        self.check_edge()

        # Every request of the phases goes to the prediction log; both replicas apply the
        # setting (within fleet_refresh_ms) before the rows are counted.
        self.ctl("models", "log", MODEL, "--mode", "full", "--sample-rate", "1")
        time.sleep(3)
        wait_until(self.spools_empty, 60, "the prediction log is idle")
        before = int(self.logged_rows().split("|")[0])

        rows = [self.phase("steady")]
        rows.append(self.phase("worker killed -9", self.kill_worker))
        self.workers[0] = self.start_worker(3)
        ctx = tls_context(self.ca, self.certs / "api-client.crt", self.certs / "api-client.key")
        w = self.workers[0]
        wait_until(lambda: call(f"https://{w.addr}/v2/models/{MODEL}/ready", ctx=ctx)[0] == 200,
                   120, f"{w.name} has loaded {MODEL}")
        self.wait_api_sees_workers(self.workers)
        rows.append(self.phase("api replica restarted", self.restart_api))
        rows.append(self.phase("PostgreSQL away 10 s", self.postgres_away))

        wait_until(self.spools_empty, 180, "the prediction-log spools are drained")
        counters = [self.log_counters(api) for api in self.apis]
        spooled = sum(c["spooled"] for c in counters)
        replayed = sum(c["replayed"] for c in counters)
        count, distinct = (int(x) for x in self.logged_rows().split("|"))
        logged = count - before
        answered = sum(r["ok"] for r in rows)
        print_table(rows)
        print(f"prediction log: {logged} rows for {answered} answered requests "
              f"({distinct - before} distinct request ids); {spooled} records went through the "
              f"spool while PostgreSQL was away ({replayed} replayed)")

        failures = [f"phase '{r['phase']}': {r['errors']}" for r in rows if r["errors"]]
        expect(not failures, "client requests failed: " + "; ".join(failures))
        out_of_pool, stopped = self.drain
        expect(out_of_pool is not None and out_of_pool < stopped,
               f"HAProxy took the draining replica out of its pool before it stopped ({out_of_pool}, {stopped:.1f} s)")
        expect(logged == answered, f"prediction-log rows ({logged}) equal the answered requests ({answered})")
        expect(distinct - before == logged, "every logged request has a request id of its own")
        expect(spooled > 0, "records went through the spool while PostgreSQL was away")
        log("PASSED")


class CurlLoad(threading.Thread):
    """TF-Serving REST with curl, one request after another, for `seconds`."""

    def __init__(self, stack, seconds):
        super().__init__(daemon=True)
        self.stack, self.seconds = stack, seconds
        self.ok, self.errors = 0, {}
        rows = stack.reference["inputs"][:2]
        self.body = json.dumps({"instances": rows})
        self.start()

    def run(self):
        url = f"{self.stack.edge}/v1/models/{MODEL}:predict"
        deadline = time.time() + self.seconds
        while time.time() < deadline:
            done = subprocess.run(
                ["curl", "-sS", "--cacert", str(self.stack.ca), "-H", f"Authorization: Bearer {self.stack.predictor}",
                 "-H", "Content-Type: application/json", "--data-binary", self.body, "-w", "\n%{http_code}",
                 "--max-time", "60", url], capture_output=True, text=True)
            body, _, code = done.stdout.rpartition("\n")
            if done.returncode != 0:
                key = f"curl exit {done.returncode}"
            elif code != "200":
                key = code
            else:
                predictions = json.loads(body).get("predictions", [])
                key = None if len(predictions) == 2 else "200 with a wrong body"
            if key:
                self.errors[key] = self.errors.get(key, 0) + 1
            else:
                self.ok += 1


def triton_load(args):
    """Child process: tritonclient over SSL for `seconds`, JSON and binary in turn; prints
    {"ok": n, "errors": {...}} as JSON."""
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    reference = json.loads((ROOT / "models" / MODEL / "reference.json").read_text())
    client = httpclient.InferenceServerClient(url=args.triton_load, concurrency=1,
                                              **interop.https_options(Path(args.ca)))
    headers = {"Authorization": f"Bearer {args.key}"}
    ok, errors, i = 0, {}, 0
    deadline = time.time() + args.seconds
    while time.time() < deadline:
        at = i % (len(reference["inputs"]) - 4)
        rows = np.array(reference["inputs"][at:at + 4], dtype=np.float32)
        binary = i % 2 == 1
        i += 1
        try:
            inp = httpclient.InferInput("input", list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows, binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
            result = client.infer(MODEL, [inp], outputs=outputs, headers=dict(headers))
            np.testing.assert_allclose(result.as_numpy("probabilities"),
                                       np.array(reference["probabilities"][at:at + 4], dtype=np.float32), atol=1e-5)
            ok += 1
        except InferenceServerException as e:
            key = str(e.status())
            errors[key] = errors.get(key, 0) + 1
        except Exception as e:  # a connection error, a wrong answer
            key = type(e).__name__
            errors[key] = errors.get(key, 0) + 1
    client.close()
    print(json.dumps({"ok": ok, "errors": errors}))


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"e2e: timed out after {timeout} s waiting until {what}")


def print_table(rows):
    head = ["phase", "requests", "answered", "errors", "p50 ms", "p99 ms"]
    lines = []
    for r in rows:
        total = r["ok"] + sum(r["errors"].values())
        errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"
        p50 = f"{r['p50_ms']:.1f}" if r["p50_ms"] is not None else "-"
        p99 = f"{r['p99_ms']:.1f}" if r["p99_ms"] is not None else "-"
        lines.append([r["phase"], str(total), str(r["ok"]), errs, p50, p99])
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = "| " + " | ".join(f"{{:{w}}}" for w in widths) + " |"
    print()
    print(fmt.format(*head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print(fmt.format(*line))
    print()
    print("requests: vaticctl bench, tritonclient and curl together; p50 and p99 are vaticctl bench's.")
    for r in rows:
        if r["notes"]:
            print(f"  {r['phase']}: {r['notes']}")
    print()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin")
    p.add_argument("--seconds", type=int, default=20)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--triton-load", help=argparse.SUPPRESS)
    p.add_argument("--ca", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.triton_load:
        return triton_load(args)
    work = Path(tempfile.mkdtemp(prefix="vatic-e2e-"))
    stack = Stack(args, work)
    try:
        stack.run()
    except BaseException:
        log(f"logs of every process are in {work}")
        args.keep = True
        raise
    finally:
        stack.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
