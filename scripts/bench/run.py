"""Measures vatic on this machine and writes docs/PERFORMANCE.md: the raw tract engine (the
profiler) beside the served model (vaticctl bench) in the same run, standalone and through a
separate api and worker, with the prediction log off and on (full payloads, PostgreSQL), what
API keys, HTTPS and encrypting the log at rest cost, a FastAPI + onnxruntime baseline,
start-to-ready time and worker memory under load.

scripts/bench.sh builds the release binaries and the baseline's virtualenv, finds PostgreSQL,
then runs this with the paths it prepared. Standard library only.
"""

import argparse
import base64
import datetime
import json
import os
import platform
import re
import secrets
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = "breast_cancer"
CNN = "resnet"
# The shadow's cost with spare capacity is measured at this share of the rate the server answers
# without one at 16 connections kept busy: the shadow doubles the inference work, so well under
# the whole machine.
SPARE_SHARE = 0.3
# Rows of the batch jobs whose rate is measured (the sizes).
BATCH_ROWS = 1_000_000
BATCH_CNN_ROWS = 10_000
# Rows of the job that runs beside real-time requests: more than its runs can take.
BATCH_BESIDE_ROWS = 2_000_000


def wrk_us(out, percentile):
    """A latency percentile of wrk --latency output, in microseconds."""
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == percentile:
            value = parts[1]
            for unit, scale in (("us", 1), ("ms", 1e3), ("s", 1e6)):
                if value.endswith(unit):
                    return float(value[: -len(unit)]) * scale
    raise SystemExit(f"no {percentile} latency in wrk's output:\n{out}")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")


def http_status(url, context=None):
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


class Server:
    """A process started for the benchmark, stopped (SIGTERM, then SIGKILL) at the end.
    `cacert` is the CA bundle an https:// `ready_url` is verified with."""

    def __init__(self, name, args, env, cwd, ready_url, log_dir, timeout=300, cacert=None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            args, env={**os.environ, **env}, cwd=cwd,
            stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT,
        )
        deadline = self.started + timeout
        context = ssl.create_default_context(cafile=str(cacert)) if cacert else None
        while http_status(ready_url, context) != 200:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited: see {self.log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} not ready after {timeout} s: see {self.log_path}")
            time.sleep(0.005)
        self.ready_after = time.monotonic() - self.started

    def rss_kib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Bench:
    def __init__(self, args):
        self.a = args
        self.bin = Path(args.bin)
        self.work = Path(tempfile.mkdtemp(prefix="vatic-bench-"))
        self.servers = []
        self.results = {}
        # What vaticctl needs, beyond --server, to talk to a server started with API keys or
        # HTTPS: VATIC_API_KEY, VATIC_CACERT; by the server's URL.
        self.client_env = {}

    def start(self, *args, **kwargs):
        s = Server(*args, **kwargs, log_dir=self.work)
        self.servers.append(s)
        return s

    def stop(self, server):
        server.stop()
        self.servers.remove(server)

    def ctl(self, server, *args, check=True):
        cmd = [str(self.bin / "vaticctl"), "--server", server, *args]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, **self.client_env.get(server, {})})
        if check and r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}{r.stderr}")
        return r

    def bench(self, server, model, levels, protocol, duration=None, busy_poll=False, rate=None,
              repeat=None):
        """One vaticctl bench run: its JSON, a figure set per level. With busy_poll the load
        generator polls for its answers instead of sleeping (`--busy-poll`). With `rate`, an open
        loop instead: that many requests a second on at most `levels[0]` connections. With
        `repeat`, that share of the requests repeat one input and the others are unique."""
        pace = (["--rate", f"{rate:.0f}", "--connections", str(levels[0])] if rate
                else ["-c", ",".join(map(str, levels))])
        r = self.ctl(server, "bench", model, *pace,
                     "--protocol", protocol, "-d", duration or self.a.duration,
                     "--warmup", self.a.warmup, "-o", "json",
                     *(["--busy-poll"] if busy_poll else []),
                     *(["--repeat", repeat] if repeat else []), check=False)
        if not r.stdout.strip():
            raise SystemExit(f"vaticctl bench {model} failed: {r.stderr}")
        return json.loads(r.stdout)

    def load(self, server, model, levels, protocol, duration=None, busy_poll=False):
        """vaticctl bench, RUNS times; per level the median of each figure."""
        runs = [self.bench(server, model, levels, protocol, duration, busy_poll)
                for _ in range(self.a.runs)]
        return medians(runs, levels, f"{model} {protocol}{' polling' if busy_poll else ''}")

    def alternate(self, sides, levels, protocol, busy_poll=False, rounds=None, model=None, rate=None,
                  repeat=None):
        """`rounds` (RUNS by default) rounds of one vaticctl bench run of the demo per side, the
        sides in turn, so that a machine slower in one part of the script slows every side; per
        side, the medians. `sides` maps a label to (server URL, a function called before each
        of its runs, or None). `rate` and `repeat`: as in `bench`."""
        runs = {label: [] for label in sides}
        for _ in range(rounds or self.a.runs):
            for label, (server, before) in sides.items():
                if before:
                    before()
                runs[label].append(self.bench(server, model or DEMO, levels, protocol,
                                              busy_poll=busy_poll, rate=rate, repeat=repeat))
        polling = ((" polling" if busy_poll else "") + (f" at {rate:.0f}/s" if rate else "")
                   + (f" {repeat} repeated" if repeat else ""))
        return {label: medians(of, levels, f"{model or DEMO} {protocol}{polling} {label}")
                for label, of in runs.items()}

    def log_mode(self, server, mode):
        """A function that sets the demo's prediction log on `server` (sample rate 1)."""
        return lambda: self.ctl(server, "models", "log", DEMO, "--mode", mode, "--sample-rate", "1")

    def log_cost(self, server, protocol, sealed=None):
        """The demo at concurrency 64 with the log off and with full payloads, in alternating
        runs, RUNS of each; with `sealed`, the URL of a like server with a data key, also its
        runs with full payloads, encrypted, in the same rounds."""
        sides = {"log off": (server, self.log_mode(server, "off")),
                 "log full": (server, self.log_mode(server, "full"))}
        if sealed:
            sides["log full, encrypted"] = (sealed, self.log_mode(sealed, "full"))
        return self.alternate(sides, [64], protocol)

    def log_steady_state(self, server):
        """Brings PostgreSQL to the state of a server that has been taking the log for a while:
        a logged JSON run of 20 s at concurrency 64, then a CHECKPOINT; returns that run's
        figures. A checkpoint keeps the WAL files it no longer needs for reuse, about as many
        as its cycle wrote; until then a cluster makes each new 16 MiB WAL file and fills it
        with zeros first (see docs/performance-notes.md)."""
        self.ctl(server, "models", "log", DEMO, "--mode", "full", "--sample-rate", "1")
        run = self.bench(server, DEMO, [64], "v2-json", duration="20s")
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", self.a.database_url, "-c", "CHECKPOINT"],
                       check=True, stdout=subprocess.DEVNULL)
        return medians([run], [64], f"{DEMO} v2-json log full, first 20 s")

    def http_floor(self, url):
        """A bare HTTP exchange with the server, no model: wrk -t1 -c1, RUNS times; medians."""
        runs = []
        for _ in range(self.a.runs):
            out = subprocess.run(["wrk", "-t1", "-c1", "-d", self.a.duration, "--latency", url],
                                 capture_output=True, text=True, check=True).stdout
            runs.append({p: wrk_us(out, p) for p in ("50%", "99%")})
        floor = {"p50": statistics.median(x["50%"] for x in runs),
                 "p99": statistics.median(x["99%"] for x in runs)}
        log(f"  bare HTTP exchange (wrk -c1 {url}): {floor}")
        return floor

    def profile(self, model_file, *extra):
        r = subprocess.run([str(self.bin / "vatic-worker"), "profile", str(model_file), "--json", *extra],
                           capture_output=True, text=True, check=True, cwd=ROOT)
        return json.loads(r.stdout)

    def repo(self):
        repo = self.work / "models"
        for name, src in [(DEMO, ROOT / "models" / DEMO / "1/model.onnx"),
                          (CNN, ROOT / "testdata/models" / CNN / "1/model.onnx")]:
            (repo / name / "1").mkdir(parents=True, exist_ok=True)
            shutil.copy(src, repo / name / "1/model.onnx")
        return repo

    # --- the measurements -------------------------------------------------------------------

    def raw(self, repo):
        log("raw tract engine (vatic-worker profile)")
        p50s = [self.profile(repo / DEMO / "1/model.onnx", "--batch-sizes", "1", "--instances", "1",
                             "--duration", self.a.duration)["cells"][0]["run_p50_us"]
                for _ in range(self.a.runs)]
        self.results["raw_demo_p50_us"] = statistics.median(p50s)
        cnn = self.profile(repo / CNN / "1/model.onnx", "--duration", "2s")
        self.results["raw_cnn"] = cnn
        log(f"  demo p50 {self.results['raw_demo_p50_us']} us; cnn best "
            f"{cnn['recommended']['best_samples_per_second']:.1f} samples/s")

    def start_standalone(self, name, repo, port, env=None, scheme="http", cacert=None,
                         database=True):
        """A standalone server on the benchmark's PostgreSQL database (without `database`, on
        the SQLite file of config/standalone.toml, in its own folder), API keys off unless
        `env` turns them on, in a folder of its own (its spool and artifact cache): the Server
        and its URL."""
        env = {
            **({"VATIC_DATABASE__URL": self.a.database_url,
                "VATIC_DATABASE__MIGRATE": "true"} if database else {}),
            "VATIC_MODELS_DIR": str(repo),
            "VATIC_LISTEN": f"127.0.0.1:{port}",
            "VATIC_METRICS_LISTEN": "127.0.0.1:0",
            "VATIC_LOG__FORMAT": "json",
            "VATIC_AUTH__ENABLED": "false",
            **(env or {}),
        }
        url = f"{scheme}://127.0.0.1:{port}"
        cwd = self.work / name
        cwd.mkdir(exist_ok=True)
        s = self.start(name, [str(self.bin / "vatic-api"), "--standalone", "--config",
                              str(ROOT / "config/standalone.toml")],
                       env, cwd, f"{url}/v2/health/ready", cacert=cacert)
        if cacert:
            self.client_env[url] = {"VATIC_CACERT": str(cacert)}
        return s, url

    def standalone(self, repo):
        log("standalone on PostgreSQL")
        s, url = self.start_standalone("standalone", repo, 18480)
        for m in (DEMO, CNN):
            self.ctl(url, "models", "log", m, "--mode", "off")
        r = self.results
        r["http_floor"] = self.http_floor(f"{url}/v2/health/live")
        r["served_demo_json"] = self.load(url, DEMO, [1, 8, 64], "v2-json")
        r["served_demo_binary"] = self.load(url, DEMO, [1, 8, 64], "v2-binary")
        r["polled_demo_json"] = self.load(url, DEMO, [1], "v2-json", busy_poll=True)
        r["polled_demo_binary"] = self.load(url, DEMO, [1], "v2-binary", busy_poll=True)
        r["served_cnn_binary"] = self.load(url, CNN, [1, 16], "v2-binary")
        r["cnn_config"] = json.loads(urllib.request.urlopen(f"{url}/v2/models/{CNN}/config").read())
        log("prediction log: full payloads, alternating with the log off and (JSON) encrypted")
        r["log_warmup_demo_json"] = self.log_steady_state(url)
        sealed_before = self.sealed_records()
        sealed, sealed_url = self.start_standalone("sealed", repo, 18485, {"VATIC_DATA_KEYS": data_key()})
        sides = self.log_cost(url, "v2-json", sealed=sealed_url)
        self.stop(sealed)
        if self.sealed_records() <= sealed_before:
            raise SystemExit("the server started with VATIC_DATA_KEYS logged no encrypted payloads: "
                             f"see {sealed.log_path}")
        r["unlogged_demo_json"], r["logged_demo_json"] = sides["log off"], sides["log full"]
        r["sealed_demo_json"] = sides["log full, encrypted"]
        sides = self.log_cost(url, "v2-binary")
        r["unlogged_demo_binary"], r["logged_demo_binary"] = sides["log off"], sides["log full"]
        self.stop(s)
        self.security(repo)

    def sealed_records(self):
        """How many records of the prediction log are encrypted; checked so that the cost of
        encryption is never read from a build that ignores VATIC_DATA_KEYS."""
        count = subprocess.run(
            ["psql", "-qAt", "-v", "ON_ERROR_STOP=1", self.a.database_url, "-c",
             "SELECT count(*) FROM predictions WHERE sealed IS NOT NULL"],
            capture_output=True, text=True)
        if count.returncode != 0:
            raise SystemExit("the prediction log has no encrypted payloads column (does this build "
                             f"encrypt it?): {count.stderr.strip()}")
        return int(count.stdout)

    def security(self, repo):
        """What API keys with a rate limit and HTTPS cost: the demo (JSON, the log off) on a
        server open over plain HTTP, alternating with like servers with each of them on, all
        three started afresh the same way (a server that has run the rest of the benchmark is
        no like for like); at concurrency 64, and for the keys also at concurrency 1 with the
        load generator polling."""
        log("security: API keys and HTTPS, alternating with neither")
        # The same batching on the three: not each server's own profile of the model at load,
        # which a shared machine's noise can make differ from one start to the next.
        same = {"VATIC_PROFILE__AT_LOAD": "false"}
        opened, url = self.start_standalone("open", repo, 18488, same)
        self.ctl(url, "models", "log", DEMO, "--mode", "off")
        admin_key = secrets.token_urlsafe(24)
        keyed, keyed_url = self.start_standalone(
            "keyed", repo, 18486,
            {**same, "VATIC_AUTH__ENABLED": "true", "VATIC_BOOTSTRAP_ADMIN_KEY": admin_key})
        self.client_env[keyed_url] = {"VATIC_API_KEY": admin_key}
        if self.ctl(keyed_url, "keys", "list", check=False).returncode != 0:
            raise SystemExit("the database already has an admin key, so VATIC_BOOTSTRAP_ADMIN_KEY was "
                             "not taken: give run.py a new database (scripts/bench.sh makes one)")
        self.ctl(keyed_url, "models", "log", DEMO, "--mode", "off")
        # A key with a limit of its own, so that every request passes the rate limiter, of a
        # million a second, so that it refuses none.
        predictor = self.ctl(keyed_url, "keys", "create", "--role", "predictor", "--rate", "1000000/s",
                             "--name", "bench").stdout.strip()
        self.client_env[keyed_url] = {"VATIC_API_KEY": predictor}
        if http_status(f"{keyed_url}/v2/models/{DEMO}") != 401:
            raise SystemExit(f"{keyed_url} answers without an API key: see {keyed.log_path}")
        certs = self.work / "certs"
        self.ctl(url, "certs", "init", str(certs))
        tls, https_url = self.start_standalone(
            "https", repo, 18487,
            {**same, "VATIC_TLS__CERT": str(certs / "api.crt"), "VATIC_TLS__KEY": str(certs / "api.key")},
            scheme="https", cacert=certs / "ca.crt")
        self.ctl(https_url, "models", "log", DEMO, "--mode", "off")
        # Twice RUNS rounds: from one 5 s run to the next, throughput at c=64 moves by more
        # than the costs measured here.
        at64 = self.alternate({"open": (url, None), "API keys": (keyed_url, None),
                               "HTTPS": (https_url, None)}, [64], "v2-json", rounds=2 * self.a.runs)
        at1 = self.alternate({"open": (url, None), "API keys": (keyed_url, None)}, [1], "v2-json",
                             busy_poll=True)
        self.stop(tls)
        self.stop(keyed)
        self.stop(opened)
        r = self.results
        r["security_open_demo_json"] = {**at1["open"], **at64["open"]}
        r["security_keys_demo_json"] = {**at1["API keys"], **at64["API keys"]}
        r["security_https_demo_json"] = at64["HTTPS"]

    def rollout(self, repo):
        """What the traffic split and a shadow cost, on a model of their own (the demo's file
        pushed twice, so both sides answer alike): unversioned requests with no rollout
        alternating with a canary at 50% and at 100% (concurrency 1, the load generator polling:
        the split decision's cost on p50; at 100% every request takes the decision's whole path
        and one version answers them all, as without a rollout), and with no shadow alternating with a shadow copying every
        request (concurrency 16: the shadow's cost on the served p99), twice: with the load
        generator's 16 connections each sending its next request when the last is answered,
        which takes every core and leaves the shadow none to spare, and at a fixed rate of
        SPARE_SHARE of what the server answered that way without a shadow, on at most 16
        connections, which leaves the shadow spare capacity."""
        log("rollout: a canary split and a shadow, alternating with neither")
        s, url = self.start_standalone("rollout", repo, 18489, {"VATIC_PROFILE__AT_LOAD": "false"})
        model, file = "rollout_demo", str(repo / DEMO / "1" / "model.onnx")
        for _ in range(2):
            self.ctl(url, "models", "push", model, file)
        self.ctl(url, "models", "log", model, "--mode", "off")
        deadline = time.time() + 120
        while http_status(f"{url}/v2/models/{model}/versions/2/ready") != 200:
            if time.time() > deadline:
                raise SystemExit(f"{model} version 2 never became ready: see {s.log_path}")
            time.sleep(0.2)

        def only_stable():
            self.ctl(url, "rollout", "rollback", model, check=False)

        def then(*args):
            def f():
                only_stable()
                self.ctl(url, "rollout", *args)
            return f

        at1 = self.alternate({"no rollout": (url, only_stable),
                              "canary 50%": (url, then("start", model, "--version", "2", "--canary", "50")),
                              "canary 100%": (url, then("start", model, "--version", "2", "--canary", "100"))},
                             [1], "v2-json", busy_poll=True, model=model)
        at16 = self.alternate({"no shadow": (url, only_stable),
                               "shadow 100%": (url, then("shadow", model, "--version", "2"))},
                              [16], "v2-json", rounds=2 * self.a.runs, model=model)
        rate = SPARE_SHARE * at16["no shadow"][16]["throughput"]
        spare = self.alternate({"no shadow": (url, only_stable),
                                "shadow 100%": (url, then("shadow", model, "--version", "2"))},
                               [16], "v2-json", rounds=2 * self.a.runs, model=model, rate=rate)
        status = json.loads(self.ctl(url, "rollout", "status", model, "--window", "1h", "-o", "json").stdout)
        decision = self.split_decision()
        shadow = [side for side in status["sides"] if side["side"] == "shadow"]
        if not shadow or shadow[0]["compared"] == 0:
            raise SystemExit(f"the shadow compared no copies: see {s.log_path}")
        self.stop(s)
        r = self.results
        r["rollout_split_demo_json"] = {"off": at1["no rollout"], "on": at1["canary 50%"],
                                        "all": at1["canary 100%"], "decision_ns": decision}
        r["rollout_shadow_demo_json"] = {"off": at16["no shadow"], "on": at16["shadow 100%"],
                                         "compared": shadow[0]["compared"],
                                         "dropped": shadow[0]["dropped"],
                                         "spare": {"rate": rate, "share": SPARE_SHARE,
                                                   "off": spare["no shadow"],
                                                   "on": spare["shadow 100%"]}}

    def split_decision(self):
        """The split decision alone, in-process (crates/api/benches/split.rs, criterion): ns per
        request by case (`no rollout`, `canary 50%`, `canary 50%, route key`)."""
        r = subprocess.run(["cargo", "bench", "-p", "vatic-api", "--bench", "split", "--",
                            "--output-format", "bencher"],
                           capture_output=True, text=True, check=True, cwd=ROOT)
        cases = {}
        for line in r.stdout.splitlines():
            m = re.match(r"test split/(.+?) \.\.\. bench:\s+([\d,]+) ns/iter", line)
            if m:
                cases[m.group(1)] = int(m.group(2).replace(",", ""))
        if len(cases) != 3:
            raise SystemExit(f"the split benchmark printed no figures:\n{r.stdout}\n{r.stderr}")
        log(f"  the split decision in-process, ns per request: {cases}")
        return cases

    def cache(self):
        """What the response cache gives and costs, on the CNN (V2 binary, concurrency 16), the
        cache on against off in alternating runs (twice RUNS rounds): with 90% of the requests repeating one input
        and the rest unique, and with every request unique. Two standalone servers, each on a
        SQLite registry of its own, import the same folder, whose model.toml opts the CNN in;
        one has the cache turned off (`cache.max_bytes = 0`)."""
        log("response cache: the CNN with 90% and with no repeated inputs, cache on against off")
        repo = self.work / "cache-models"
        (repo / CNN / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "testdata/models" / CNN / "1/model.onnx", repo / CNN / "1/model.onnx")
        (repo / CNN / "model.toml").write_text("[cache]\nenabled = true\n")
        env = {"VATIC_PROFILE__AT_LOAD": "false"}
        on, on_url = self.start_standalone("cache-on", repo, 18490, env, database=False)
        off, off_url = self.start_standalone("cache-off", repo, 18491,
                                             {**env, "VATIC_CACHE__MAX_BYTES": "0"}, database=False)
        sides = {"cache off": (off_url, None), "cache on": (on_url, None)}
        rounds = self.results["cache_rounds"] = 2 * self.a.runs
        self.results["cache_cnn_binary"] = {
            share: self.alternate(sides, [16], "v2-binary", model=CNN, repeat=share, rounds=rounds)
            for share in ("90%", "0%")}
        self.stop(on)
        self.stop(off)

    def engines(self):
        """ONNX Runtime beside tract. Raw ONNX Runtime on the CNN in-process (`vatic-worker
        profile --engine onnxruntime`, the same grid as raw tract); then three standalone
        servers, each on a SQLite registry of its own with one model: the CNN whose model.toml
        says onnxruntime, loaded at several concurrencies to find its best; the demo with no
        model.toml (tract) and the demo whose model.toml says `auto`, in alternating runs,
        tract against whatever `auto` chose."""
        log("raw ONNX Runtime engine (vatic-worker profile --engine onnxruntime)")
        cnn_file = ROOT / "testdata/models" / CNN / "1/model.onnx"
        raw = self.profile(cnn_file, "--duration", "2s", "--engine", "onnxruntime")
        self.results["raw_cnn_onnxruntime"] = raw
        log(f"  cnn best {raw['recommended']['best_samples_per_second']:.1f} samples/s")

        log("the CNN served with onnxruntime; the demo with auto against tract")
        # One model per server, each started once the one before is ready, so that no load-time
        # measurement shares the cores with another.
        servers = {}
        for label, model, engine, port in (("onnxruntime", CNN, "onnxruntime", 18495),
                                           ("tract", DEMO, None, 18496),
                                           ("auto", DEMO, "auto", 18497)):
            repo = self.work / f"engine-{label}"
            src = ROOT / ("models" if model == DEMO else "testdata/models") / model / "1/model.onnx"
            (repo / model / "1").mkdir(parents=True, exist_ok=True)
            shutil.copy(src, repo / model / "1/model.onnx")
            if engine:
                (repo / model / "model.toml").write_text(f'engine = "{engine}"\n')
            server, url = self.start_standalone(f"engine-{label}", repo, port, database=False)
            self.ctl(url, "models", "log", model, "--mode", "off")
            servers[label] = (server, url)
        r = self.results
        ort, ort_url = servers["onnxruntime"]
        r["engine_cnn_config"] = json.loads(
            urllib.request.urlopen(f"{ort_url}/v2/models/{CNN}/config").read())
        if r["engine_cnn_config"]["backend"] != "onnxruntime":
            raise SystemExit(f"the CNN is not served by onnxruntime: see {ort.log_path}")
        auto, auto_url = servers["auto"]
        loaded = json.loads(self.ctl(auto_url, "models", "describe", DEMO, "-o", "json").stdout
                            )["versions"][0].get("loaded")
        if not loaded or len(loaded[0].get("engines", [])) != 2:
            raise SystemExit(f"the demo with engine = auto reports no figures ({loaded}): "
                             f"see {auto.log_path}")
        r["engine_demo_loaded"] = loaded[0]
        log(f"  demo with auto: {loaded[0]}")
        r["served_cnn_onnxruntime_binary"] = self.load(ort_url, CNN, [1, 8, 16, 32], "v2-binary")
        r["engine_demo_binary"] = self.alternate(
            {"tract": (servers["tract"][1], None), "auto": (auto_url, None)}, [1, 64], "v2-binary")
        for server, _ in servers.values():
            self.stop(server)

    def batch_file(self, model, rows):
        """A batch job's input of `rows` rows: for the demo, CSV of its reference rows cycled;
        for the CNN, JSON Lines of V2 bodies of one image each, of small whole numbers (the
        cost of a convolution does not depend on the values)."""
        path = self.work / f"batch-{model}-{rows}.{'csv' if model == DEMO else 'jsonl'}"
        if path.exists():
            return path
        with open(path, "w") as f:
            if model == DEMO:
                inputs = json.loads((ROOT / "models" / DEMO / "reference.json").read_text())["inputs"]
                f.write(",".join(f"f{i}" for i in range(30)) + "\n")
                lines = [",".join(repr(v) for v in row) + "\n" for row in inputs]
                for i in range(rows):
                    f.write(lines[i % len(lines)])
            else:
                for i in range(rows):
                    data = ",".join(str((i + k) % 10) for k in range(3 * 64 * 64))
                    f.write('{"inputs":[{"name":"image","datatype":"FP32","shape":[1,3,64,64],'
                            f'"data":[{data}]}}]}}\n')
        return path

    def job(self, url, job_id):
        return json.loads(self.ctl(url, "batch", "status", job_id, "-o", "json").stdout)

    def batch(self, repo):
        """Batch jobs against the same standalone configuration as the served figures: a job
        running beside real-time requests at SPARE_SHARE of what the server answers saturated
        (the demo, V2 JSON, concurrency 16, open loop), alternating with no job; then a job of
        BATCH_ROWS demo rows and one of BATCH_CNN_ROWS CNN images, each alone, their rate
        (rows from the first claim to the last result) against the served throughput measured on
        the same server just before and just after it."""
        log("batch jobs: real time beside a job, and a job's rate against the served throughput")
        s, url = self.start_standalone("batch", repo, 18492)
        for m in (DEMO, CNN):
            self.ctl(url, "models", "log", m, "--mode", "off")
        demo_file = self.batch_file(DEMO, BATCH_BESIDE_ROWS)
        submitted = json.loads(self.ctl(url, "batch", "submit", str(demo_file), "--model", DEMO,
                                        "-o", "json").stdout)
        beside = submitted["id"]
        self.ctl(url, "batch", "cancel", beside)

        def no_job():
            if self.job(url, beside)["state"] in ("queued", "running"):
                self.ctl(url, "batch", "cancel", beside)

        def job_running():
            self.ctl(url, "batch", "retry", beside)
            deadline = time.time() + 60
            while self.job(url, beside)["rows_done"] == 0 or self.job(url, beside)["state"] != "running":
                if time.time() > deadline:
                    raise SystemExit(f"the batch job never ran: see {s.log_path}")
                time.sleep(0.1)

        saturated = self.bench(url, DEMO, [16], "v2-json")
        rate = SPARE_SHARE * saturated[0]["throughput"]
        sides = self.alternate({"no job": (url, no_job), "job running": (url, job_running)},
                               [16], "v2-json", rounds=2 * self.a.runs, rate=rate)
        no_job()
        r = self.results
        r["batch_realtime_demo_json"] = {"rate": rate, "share": SPARE_SHARE,
                                         "saturated": saturated[0]["throughput"],
                                         "off": sides["no job"], "on": sides["job running"]}
        for key, model, rows in (("batch_demo", DEMO, BATCH_ROWS), ("batch_cnn", CNN, BATCH_CNN_ROWS)):
            file = self.batch_file(model, rows)
            # The served throughput the job is held against, on this server just before and just
            # after the job, so that a machine whose speed drifts over the script's run moves both.
            level, protocols = (64, ("v2-json", "v2-binary")) if model == DEMO else (16, ("v2-binary",))

            def served():
                return max(self.bench(url, model, [level], p)[0]["throughput"] for p in protocols)
            before = served()
            started = time.monotonic()
            out = self.ctl(url, "batch", "submit", str(file), "--model", model, "--wait", "-o", "json")
            job = json.loads(out.stdout)
            if job["state"] != "succeeded" or job["rows_failed"] or job["rows_done"] != rows:
                raise SystemExit(f"the {model} batch job did not run every row: {job}; see {s.log_path}")
            wall = time.monotonic() - started
            after = served()
            r[key] = {"rows": rows, "rows_per_second": job["rows_per_second"],
                      "bytes": job["input_bytes"], "wall_s": wall,
                      "served_before": before, "served_after": after, "served": max(before, after)}
            log(f"  {model}: {rows} rows at {job['rows_per_second']:.0f} rows/s; served "
                f"{before:.0f} req/s before and {after:.0f} after")
        self.stop(s)

    def cluster(self, repo):
        log("separate worker and api processes")
        wport, aport = 18481, 18482
        w = self.start("worker", [str(self.bin / "vatic-worker"), "--config", str(ROOT / "config/worker.toml"),
                                  "--listen", f"127.0.0.1:{wport}", "--metrics-listen", "127.0.0.1:0",
                                  "--models-dir", str(repo)],
                       {}, self.work, f"http://127.0.0.1:{wport}/v2/health/ready")
        api = f"http://127.0.0.1:{aport}"
        # Keys off, as on the standalone server: what they cost is measured on its own (security).
        a = self.start("api", [str(self.bin / "vatic-api"), "--config", str(ROOT / "config/api.toml"),
                               "--listen", f"127.0.0.1:{aport}", "--metrics-listen", "127.0.0.1:0",
                               "--workers", f"http://127.0.0.1:{wport}"],
                       {"VATIC_AUTH__ENABLED": "false"}, self.work, f"{api}/v2/health/ready")
        self.results["cluster_demo_json"] = self.load(api, DEMO, [1], "v2-json")
        self.results["cluster_demo_binary"] = self.load(api, DEMO, [1], "v2-binary")
        self.results["cluster_polled_demo_binary"] = self.load(api, DEMO, [1], "v2-binary", busy_poll=True)
        if self.a.soak > 0:
            self.soak(w, api)
        self.stop(a)
        self.stop(w)

    def soak(self, worker, api):
        log(f"worker memory under {self.a.soak} s of load")
        load = subprocess.Popen([str(self.bin / "vaticctl"), "--server", api, "bench", DEMO, "-c", "8",
                                 "-d", f"{self.a.soak}s", "--warmup", "0s", "-o", "json"],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)
        samples = []
        start = time.monotonic()
        while load.poll() is None:
            samples.append((time.monotonic() - start, worker.rss_kib()))
            time.sleep(5)
        out, _ = load.communicate()
        level = json.loads(out)[0]
        self.results["soak"] = {"samples": samples, "requests": level["requests"],
                                "errors": sum(level["errors"].values())}

    def baseline(self, repo):
        log("FastAPI + onnxruntime baseline")
        port = 18483
        url = f"http://127.0.0.1:{port}"
        # One uvicorn process, as a tutorial runs it; onnxruntime's own threads use every core.
        # (With --workers 2 every request takes 44 ms, a delay, not work: see report.py.)
        s = self.start("baseline", [str(Path(self.a.baseline_python).parent / "uvicorn"), "app:app",
                                    "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                       {"MODEL_DIR": str(repo)}, ROOT / "benches/baseline", f"{url}/v2/models/{DEMO}")
        self.results["baseline_demo_json"] = self.load(url, DEMO, [1, 8, 64], "v2-json")
        self.stop(s)

    def start_to_ready(self):
        log("start to ready (standalone, SQLite, the demo model)")
        first, again = [], []
        for i in range(self.a.runs):
            d = self.work / f"start{i}"
            d.mkdir()
            args = [str(self.bin / "vatic-api"), "--standalone", "--config", str(ROOT / "config/standalone.toml"),
                    "--models-dir", str(ROOT / "models"), "--listen", "127.0.0.1:18484",
                    "--metrics-listen", "127.0.0.1:0"]
            for times in (first, again):
                s = self.start(f"start{i}", args, {}, d, "http://127.0.0.1:18484/v2/health/ready")
                times.append(s.ready_after)
                self.stop(s)
        self.results["start_first_s"] = statistics.median(first)
        self.results["start_again_s"] = statistics.median(again)

    def run(self):
        repo = self.repo()
        try:
            self.raw(repo)
            self.standalone(repo)
            self.cluster(repo)
            self.baseline(repo)
            self.start_to_ready()
            self.rollout(repo)
            self.cache()
            self.engines()
            self.batch(repo)
        finally:
            for s in list(self.servers):
                s.stop()
        self.results["model_bytes"] = sum(f.stat().st_size for f in repo.glob("*/1/model.onnx"))
        return self.results


def medians(runs, levels, label):
    """Per level, the median of each figure over vaticctl bench runs."""
    out = {}
    for i, level in enumerate(levels):
        of = [run[i] for run in runs]
        med = lambda f: statistics.median(f(x) for x in of)
        out[level] = {
            "throughput": med(lambda x: x["throughput"]),
            "p50": med(lambda x: (x["latency_us"] or {}).get("p50", float("nan"))),
            "p99": med(lambda x: (x["latency_us"] or {}).get("p99", float("nan"))),
            "errors": sum(sum(x["errors"].values()) for x in of),
        }
        log(f"  {label} c={level}: {out[level]}")
    return out


def data_key():
    """A data key entry for VATIC_DATA_KEYS: an id and 32 random bytes in base64."""
    return f"bench={base64.b64encode(os.urandom(32)).decode()}"


def machine():
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
               if l.startswith("MemTotal"))
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem / 1024 / 1024:.0f} GiB, Linux {platform.release()}, "
            f"{rustc}, {idle_states()}; load generator, servers and database on the same machine")


def idle_states():
    """How an idle CPU waits: the cpuidle driver and, under the haltpoll driver of a KVM guest,
    how long it polls before it halts. Wake-ups from a halt dominate latency at low load."""
    base = Path("/sys/devices/system/cpu/cpuidle")
    try:
        driver = (base / "current_driver").read_text().strip()
    except OSError:
        return "cpuidle driver unknown"
    if driver == "haltpoll" and HALT_POLL.exists():
        return f"cpuidle driver haltpoll with guest_halt_poll_ns={HALT_POLL.read_text().strip()}"
    return f"cpuidle driver {driver}"


def load_results(path):
    """Results saved with --json; JSON made the concurrency levels strings again."""
    def levels(value):
        if isinstance(value, dict):
            return {int(k) if k.isdigit() else k: levels(v) for k, v in value.items()}
        if isinstance(value, list):
            return [levels(v) for v in value]
        return value
    return levels(json.loads(Path(path).read_text()))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin")
    p.add_argument("--database-url")
    p.add_argument("--baseline-python")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", default="5s")
    p.add_argument("--warmup", default="1s")
    p.add_argument("--soak", type=int, default=300)
    p.add_argument("--command", default="scripts/bench.sh")
    p.add_argument("--json", help="also write the raw results here")
    p.add_argument("--render", help="only write the page from results saved by --json")
    p.add_argument("--page", type=Path, default=ROOT / "docs/PERFORMANCE.md",
                   help="where to write the page (for a trial run, somewhere else)")
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import report
    if a.render:
        a.page.write_text(report.render(load_results(a.render)))
        return
    results = Bench(a).run()
    results["machine"] = machine()
    results["date"] = datetime.date.today().isoformat()
    results["command"] = a.command
    results["settings"] = {"runs": a.runs, "duration": a.duration, "warmup": a.warmup, "soak_s": a.soak}
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    a.page.write_text(report.render(results))
    log(f"wrote {a.page}")


if __name__ == "__main__":
    main()
