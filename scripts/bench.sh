#!/usr/bin/env bash
# Measures vatic on this machine and writes docs/PERFORMANCE.md: raw tract (the profiler) beside
# the served models (vaticctl bench) at concurrency 1, 8 and 64, JSON and binary, standalone and
# through a separate api and worker; the prediction log off and on (full payloads, PostgreSQL);
# what API keys with a rate limit, HTTPS and encrypting the log at rest cost, each against the
# same build with it off; the compute-heavy CNN fixture; a FastAPI + onnxruntime baseline
# (benches/baseline); start to ready; worker memory under load; what a canary split and a shadow
# cost, each against no rollout (and the split's decision alone, in-process: crates/api/benches);
# the CNN served with ONNX Runtime against raw ONNX Runtime, and the demo with `engine = "auto"`
# against tract.
# Takes about 25 minutes on 2 cores, the builds aside.
#
# Concurrency 1 is measured twice: with the load generator sleeping until each answer comes,
# as the other levels are, and with it polling for them (`vaticctl bench --busy-poll`), so that
# its own wake-up is not counted as the server's latency.
#
# Needs what scripts/test.sh needs (Rust, python3 with venv, a PostgreSQL server: see
# scripts/test-db.sh), psql and wrk (installed when missing). Settings: RUNS (3), DURATION (5s), WARMUP (1s), SOAK seconds
# (300; 0 skips the memory run).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --workspace --bins
# The split decision's in-process benchmark (crates/api/benches/split.rs), built before anything
# is measured.
cargo bench -p vatic-api --bench split --no-run
bin="${CARGO_TARGET_DIR:-target}/release"

admin_url="$(scripts/test-db.sh)"
database_url="${admin_url%/*}/vatic_bench"
command -v psql >/dev/null || scripts/need.sh psql postgresql-client
scripts/need.sh wrk wrk
# The onnxruntime engine's library, from the onnxruntime wheel (scripts/install-onnxruntime.sh).
ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/install-onnxruntime.sh)}"
export ORT_DYLIB_PATH
psql -q "$admin_url" -c "DROP DATABASE IF EXISTS vatic_bench" -c "CREATE DATABASE vatic_bench"

venv="${VATIC_BENCH_VENV:-$HOME/.cache/vatic/bench-venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r benches/baseline/requirements.txt

python3 scripts/bench/run.py --bin "$bin" --database-url "$database_url" \
  --baseline-python "$venv/bin/python" --runs "${RUNS:-3}" --duration "${DURATION:-5s}" \
  --warmup "${WARMUP:-1s}" --soak "${SOAK:-300}" \
  --command "scripts/bench.sh${RUNS:+ (RUNS=$RUNS)}" --json "${BENCH_JSON:-/tmp/vatic-bench.json}"
