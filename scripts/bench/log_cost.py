"""What the prediction log costs at concurrency 64, and where: the standalone server on
PostgreSQL, the demo model, `vaticctl bench -c 64` with the log off and with full payloads, in
alternating rounds. For each run: throughput, p99, and the CPU time per request of the server
and of every PostgreSQL process (utime + stime from /proc/PID/stat, so PostgreSQL must run on
this machine). The log table is emptied before each logged run.

`--indexes` also compares index sets on the log table, switched between runs: `brin` (the
schema as migrated: one BRIN index on `at`) and `btree` (the indexes before migration 0006: the
primary key (id, at) and a B-tree on (model, at)). `--encrypted` adds, in the same rounds, full
payloads encrypted at rest (the schema as migrated): a second server, given a data key in
VATIC_DATA_KEYS, takes those runs, and its CPU is the one counted.

    python3 scripts/bench/log_cost.py --bin target/release \\
        --database-url postgres://postgres@127.0.0.1:5432/postgres --protocol v2-json --rounds 3

`--copy N` measures the database alone instead, without a server: N records shaped like the
demo model's (about 680 bytes of JSON each) copied into an empty day partition by binary COPY
from psql, in transactions of `--batch` records, for each index set of `--indexes` (here also
`pkey`, the primary key alone, and `none`); it prints the CPU time of the backend that took the
COPY per record.

    python3 scripts/bench/log_cost.py --bin target/release \\
        --database-url postgres://postgres@127.0.0.1:5432/postgres --copy 100000 --batch 500 \\
        --indexes brin,btree,pkey,none --rounds 3

Standard library only; psql on the PATH. Creates and drops the database `vatic_log_cost`.
"""

import argparse
import base64
import datetime
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run import DEMO, ROOT, Server  # noqa: E402

INDEXES = {
    "brin": [
        "DROP INDEX IF EXISTS predictions_model_at",
        "ALTER TABLE predictions DROP CONSTRAINT IF EXISTS predictions_pkey",
        "CREATE INDEX IF NOT EXISTS predictions_at ON predictions USING brin (at)",
    ],
    "btree": [
        "DROP INDEX IF EXISTS predictions_at",
        "ALTER TABLE predictions ADD PRIMARY KEY (id, at)",
        "CREATE INDEX predictions_model_at ON predictions (model, at)",
    ],
    "pkey": [
        "DROP INDEX IF EXISTS predictions_at",
        "ALTER TABLE predictions ADD PRIMARY KEY (id, at)",
    ],
    "none": ["DROP INDEX IF EXISTS predictions_at"],
}
# The day partition --copy writes into.
DAY = datetime.datetime(2026, 1, 15, tzinfo=datetime.timezone.utc)
DATABASE = "vatic_log_cost"


def cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def postgres_ticks():
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres":
                total += cpu_ticks(pid)
        except OSError:
            pass
    return total


def copy_data(records, batch):
    """Binary COPY data (the format vatic-store writes) for `records` demo-shaped records, one
    bytes object per `batch` of them."""
    rng = random.Random(1)
    epoch = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)
    start = int((DAY - epoch).total_seconds() * 1e6)
    response = json.dumps({"model_name": DEMO, "model_version": "1", "outputs": [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 0.9]}]},
        separators=(",", ":")).encode()
    field = lambda b: struct.pack(">i", len(b)) + b
    out = []
    for first in range(0, records, batch):
        data = bytearray(b"PGCOPY\n\xff\r\n\0" + struct.pack(">ii", 0, 0))
        for i in range(first, min(first + batch, records)):
            request = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 30],
                                              "data": [rng.random() * 100 for _ in range(30)]}]},
                                 separators=(",", ":")).encode()
            data += struct.pack(">h", 10)
            data += field(rng.randbytes(16)) + field(struct.pack(">q", start + i * 30))
            data += field(f"req-{i}".encode()) + field(DEMO.encode()) + field(b"1")
            data += struct.pack(">i", -1)  # api_key
            data += field(struct.pack(">h", 200)) + field(struct.pack(">q", 250))
            data += field(request) + field(response)
        data += struct.pack(">h", -1)
        out.append(bytes(data))
    return out


def copy_rounds(a, url, psql, work):
    """`--copy`: the backend's CPU per record for each index set, `--rounds` times."""
    files = []
    for n, data in enumerate(copy_data(a.copy, a.batch)):
        files.append(work / f"batch{n}.copy")
        files[-1].write_bytes(data)
    day, next_day = DAY.date(), (DAY + datetime.timedelta(days=1)).date()
    print(f"{'round':>5} {'indexes':8} {'backend us/record':>18}")
    for round_ in range(a.rounds):
        for setting in a.indexes.split(","):
            psql(url, "DROP TABLE IF EXISTS predictions_copy_day",
                 f"CREATE TABLE predictions_copy_day PARTITION OF predictions "
                 f"FOR VALUES FROM ('{day}') TO ('{next_day}')",
                 *INDEXES["brin"], *INDEXES[setting], "CHECKPOINT")
            session = subprocess.Popen(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", url], text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)

            def ask(line):
                session.stdin.write(line + "\n")
                session.stdin.flush()
                return session.stdout.readline().strip()

            pid = ask("SELECT pg_backend_pid();")
            before = cpu_ticks(pid)
            for f in files:
                session.stdin.write(f"\\copy predictions FROM '{f}' (FORMAT binary)\n")
            stored = ask("SELECT count(*) FROM predictions_copy_day;")
            after = cpu_ticks(pid)
            if stored != str(a.copy):
                raise SystemExit(f"psql: {stored or 'no'} records stored of {a.copy}")
            session.stdin.close()
            if session.wait() != 0:
                raise SystemExit("psql failed")
            per_record = (after - before) / os.sysconf("SC_CLK_TCK") * 1e6 / a.copy
            print(f"{round_:>5} {setting:8} {per_record:18.2f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True, help="folder of the release binaries")
    p.add_argument("--database-url", required=True, help="a PostgreSQL URL to create the database from")
    p.add_argument("--protocol", default="v2-json", choices=["v2-json", "v2-binary"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5, help="length of each run, after 1 s of warm-up")
    p.add_argument("--indexes", default="brin",
                   help="index sets to compare, by comma: brin, btree (and pkey, none with --copy)")
    p.add_argument("--encrypted", action="store_true",
                   help="also full payloads encrypted at rest, by a second server with a data key")
    p.add_argument("--copy", type=int, metavar="N", help="measure a COPY of N records, no server")
    p.add_argument("--batch", type=int, default=500, help="records per transaction with --copy")
    a = p.parse_args()
    allowed = INDEXES if a.copy else ["brin", "btree"]
    for name in a.indexes.split(","):
        if name not in allowed:
            raise SystemExit(f"--indexes: unknown index set {name!r} ({', '.join(allowed)})")
    if a.batch < 1 or (a.copy is not None and a.copy < 1):
        raise SystemExit("--copy and --batch take a whole number of records, at least 1")
    binary = Path(a.bin)
    admin_url = a.database_url
    url = admin_url.rsplit("/", 1)[0] + "/" + DATABASE

    def psql(database_url, *statements):
        args = [x for s in statements for x in ("-c", s)]
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", database_url, *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    psql(admin_url, f"DROP DATABASE IF EXISTS {DATABASE}", f"CREATE DATABASE {DATABASE}")
    work = Path(tempfile.mkdtemp(prefix="vatic-log-cost-"))
    if a.copy:
        try:
            subprocess.run([str(binary / "vaticctl"), "migrate", "--database-url", url],
                           check=True, stdout=subprocess.DEVNULL)
            copy_rounds(a, url, psql, work)
        finally:
            shutil.rmtree(work)
            psql(admin_url, f"DROP DATABASE IF EXISTS {DATABASE}")
        return
    (work / "models" / DEMO / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models" / DEMO / "1/model.onnx", work / "models" / DEMO / "1/model.onnx")
    servers = {}

    def start(name, port, env):
        """A standalone server in a folder of its own (its spool), on the database `url`."""
        (work / name).mkdir()
        server_url = f"http://127.0.0.1:{port}"
        env = {
            "VATIC_DATABASE__URL": url,
            "VATIC_DATABASE__MIGRATE": "true",
            "VATIC_MODELS_DIR": str(work / "models"),
            "VATIC_LISTEN": f"127.0.0.1:{port}",
            "VATIC_METRICS_LISTEN": "127.0.0.1:0",
            "VATIC_LOG__FORMAT": "json",
            "VATIC_AUTH__ENABLED": "false",
            **env,
        }
        servers[name] = (Server(name, [str(binary / "vatic-api"), "--standalone", "--config",
                                       str(ROOT / "config/standalone.toml")],
                                env, work / name, f"{server_url}/v2/health/ready", work), server_url)

    def ctl(server_url, *args):
        return subprocess.run([str(binary / "vaticctl"), "--server", server_url, *args],
                              capture_output=True, text=True, check=True).stdout

    settings = ["off", *a.indexes.split(",")]
    print(f"{'round':>5} {'log':8} {'req/s':>9} {'p99 us':>8} {'cost':>6} {'server us/req':>14} "
          f"{'postgres us/req':>16}")
    try:
        start("standalone", 18490, {})
        if a.encrypted:
            settings.append("encrypted")
            start("encrypted", 18491,
                  {"VATIC_DATA_KEYS": f"bench={base64.b64encode(os.urandom(32)).decode()}"})
        for round_ in range(a.rounds):
            off = None
            for setting in settings:
                server, server_url = servers["encrypted" if setting == "encrypted" else "standalone"]
                ctl(server_url, "models", "log", DEMO, "--mode", "off" if setting == "off" else "full",
                    "--sample-rate", "1")
                if setting != "off":
                    psql(url, "TRUNCATE predictions", *INDEXES["brin" if setting == "encrypted" else setting])
                psql(url, "CHECKPOINT")
                server0, pg0 = cpu_ticks(server.proc.pid), postgres_ticks()
                run = json.loads(ctl(server_url, "bench", DEMO, "-c", "64", "-d", f"{a.seconds}s",
                                     "--warmup", "1s", "--protocol", a.protocol, "-o", "json"))[0]
                server1, pg1 = cpu_ticks(server.proc.pid), postgres_ticks()
                # The CPU was read around the warm-up too: count its requests at the same rate.
                requests = run["throughput"] * (a.seconds + 1)
                per_request = lambda ticks: ticks / os.sysconf("SC_CLK_TCK") * 1e6 / requests
                off = run["throughput"] if setting == "off" else off
                cost = f"{(1 - run['throughput'] / off) * 100:5.1f}%" if setting != "off" else ""
                label = setting if setting in ("off", "encrypted") else f"full/{setting}"
                print(f"{round_:>5} {label:8} {run['throughput']:9.1f} {run['latency_us']['p99']:8.0f} "
                      f"{cost:>6} {per_request(server1 - server0):14.1f} "
                      f"{per_request(pg1 - pg0):16.1f}", flush=True)
    finally:
        for server, _ in servers.values():
            server.stop()
        psql(admin_url, f"DROP DATABASE IF EXISTS {DATABASE}")


if __name__ == "__main__":
    main()
