#!/usr/bin/env bash
# Checks the Kubernetes manifests of deploy/k8s without a cluster (scripts/k8s/check.py):
# kubernetes-validate (PyPI) against the Kubernetes schemas, and the references between objects.
# Needs python3 with venv and vaticctl built (cargo build --workspace --bins).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VATIC_VENV:-$HOME/.cache/vatic/venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/k8s/requirements.txt
"$venv/bin/python" scripts/k8s/check.py "${CARGO_TARGET_DIR:-target}/debug/vaticctl"
