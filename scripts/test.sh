#!/usr/bin/env bash
# The whole test suite: the Prometheus config and alert rules (promtool), docker-compose.yml,
# haproxy/ and elk/ (docker-compose config, haproxy -c), the Kubernetes manifests of deploy/k8s
# (kubernetes-validate), every crate's unit and integration tests, the request parsers' fuzz
# targets for a minute each, Triton's own Python client against the api and a worker, over plain
# HTTP and over HTTPS with an API key, then the production stack end to end through nginx and
# HAProxy with faults (scripts/e2e.sh).
# Needs the Rust toolchain, python3 (with venv and pip: ONNX Runtime's library comes from PyPI),
# promtool, docker-compose, haproxy and nginx (installed from Debian's packages when missing)
# and a PostgreSQL server:
# $DATABASE_URL, else one on 127.0.0.1:5432, else a throwaway cluster from the installed
# PostgreSQL binaries (see scripts/test-db.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

DATABASE_URL="$(scripts/test-db.sh)"
export DATABASE_URL
echo "tests use PostgreSQL at ${DATABASE_URL}"
# The onnxruntime engine's tests load ONNX Runtime's library from the onnxruntime wheel.
ORT_DYLIB_PATH="$(scripts/install-onnxruntime.sh)"
export ORT_DYLIB_PATH
echo "tests use ONNX Runtime at ${ORT_DYLIB_PATH}"

scripts/check-prometheus.sh
cargo build --workspace --bins
scripts/check-compose.sh
scripts/check-k8s.sh
cargo test --workspace
# The workspace run gives each fuzz target 2.5 s; this one a minute (docs/security.md, "Fuzzing").
# `--workspace` keeps the features, and so the build, of the run above.
VATIC_FUZZ_SECONDS=60 cargo test --workspace --test fuzz -- --nocapture

venv="${VATIC_VENV:-$HOME/.cache/vatic/venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/interop/requirements.txt
target="${CARGO_TARGET_DIR:-target}/debug"
"$venv/bin/python" scripts/interop/triton_client.py "$target"

scripts/e2e.sh
