"""What the prediction log costs at concurrency 64, and where: the standalone server on
PostgreSQL, the demo model, `vaticctl bench -c 64` with the log off and with full payloads, in
alternating rounds. For each run: throughput, p99, and the CPU time per request of the server
and of every PostgreSQL process (utime + stime from /proc/PID/stat, so PostgreSQL must run on
this machine). The log table is emptied before each logged run.

`--indexes` also compares index sets on the log table, switched between runs: `brin` (the
schema as migrated: one BRIN index on `at`) and `btree` (the indexes before migration 0006: the
primary key (id, at) and a B-tree on (model, at)).

    python3 scripts/bench/log_cost.py --bin target/release \\
        --database-url postgres://postgres@127.0.0.1:5432/postgres --protocol v2-json --rounds 3

Standard library only; psql on the PATH. Creates and drops the database `vatic_log_cost`.
"""

import argparse
import json
import os
import shutil
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
}
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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", required=True, help="folder of the release binaries")
    p.add_argument("--database-url", required=True, help="a PostgreSQL URL to create the database from")
    p.add_argument("--protocol", default="v2-json", choices=["v2-json", "v2-binary"])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5, help="length of each run, after 1 s of warm-up")
    p.add_argument("--indexes", default="brin", help="index sets to compare: brin, btree or both")
    a = p.parse_args()
    for name in a.indexes.split(","):
        if name not in INDEXES:
            raise SystemExit(f"--indexes: unknown index set {name!r} (brin, btree)")
    binary = Path(a.bin)
    admin_url = a.database_url
    url = admin_url.rsplit("/", 1)[0] + "/" + DATABASE

    def psql(database_url, *statements):
        args = [x for s in statements for x in ("-c", s)]
        subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", database_url, *args],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    psql(admin_url, f"DROP DATABASE IF EXISTS {DATABASE}", f"CREATE DATABASE {DATABASE}")
    work = Path(tempfile.mkdtemp(prefix="vatic-log-cost-"))
    (work / "models" / DEMO / "1").mkdir(parents=True)
    shutil.copy(ROOT / "models" / DEMO / "1/model.onnx", work / "models" / DEMO / "1/model.onnx")
    port = 18490
    server_url = f"http://127.0.0.1:{port}"
    env = {
        "VATIC_DATABASE__URL": url,
        "VATIC_DATABASE__MIGRATE": "true",
        "VATIC_MODELS_DIR": str(work / "models"),
        "VATIC_LISTEN": f"127.0.0.1:{port}",
        "VATIC_METRICS_LISTEN": "127.0.0.1:0",
        "VATIC_LOG__FORMAT": "json",
    }
    server = Server("standalone", [str(binary / "vatic-api"), "--standalone", "--config",
                                   str(ROOT / "config/standalone.toml")],
                    env, work, f"{server_url}/v2/health/ready", work)

    def ctl(*args):
        return subprocess.run([str(binary / "vaticctl"), "--server", server_url, *args],
                              capture_output=True, text=True, check=True).stdout

    print(f"{'round':>5} {'log':8} {'req/s':>9} {'p99 us':>8} {'cost':>6} {'server us/req':>14} "
          f"{'postgres us/req':>16}")
    try:
        for round_ in range(a.rounds):
            off = None
            for setting in ["off", *a.indexes.split(",")]:
                ctl("models", "log", DEMO, "--mode", "off" if setting == "off" else "full",
                    "--sample-rate", "1")
                if setting != "off":
                    psql(url, "TRUNCATE predictions", *INDEXES[setting])
                psql(url, "CHECKPOINT")
                server0, pg0 = cpu_ticks(server.proc.pid), postgres_ticks()
                run = json.loads(ctl("bench", DEMO, "-c", "64", "-d", f"{a.seconds}s", "--warmup", "1s",
                                     "--protocol", a.protocol, "-o", "json"))[0]
                server1, pg1 = cpu_ticks(server.proc.pid), postgres_ticks()
                # The CPU was read around the warm-up too: count its requests at the same rate.
                requests = run["throughput"] * (a.seconds + 1)
                per_request = lambda ticks: ticks / os.sysconf("SC_CLK_TCK") * 1e6 / requests
                off = run["throughput"] if setting == "off" else off
                cost = f"{(1 - run['throughput'] / off) * 100:5.1f}%" if setting != "off" else ""
                label = "off" if setting == "off" else f"full/{setting}"
                print(f"{round_:>5} {label:8} {run['throughput']:9.1f} {run['latency_us']['p99']:8.0f} "
                      f"{cost:>6} {per_request(server1 - server0):14.1f} "
                      f"{per_request(pg1 - pg0):16.1f}", flush=True)
    finally:
        server.stop()
        psql(admin_url, f"DROP DATABASE IF EXISTS {DATABASE}")


if __name__ == "__main__":
    main()
