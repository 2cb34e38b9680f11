#!/usr/bin/env bash
# scripts/install-onnxruntime.sh [DIR]: installs ONNX Runtime's shared library, for the
# onnxruntime engine (docs/engines.md), from the `onnxruntime` wheel on PyPI into DIR (default
# ~/.cache/vatic/onnxruntime/<version>), and prints the library's path: set it as
# `onnxruntime.library` or ORT_DYLIB_PATH. Nothing is downloaded when it is already there.
# Needs python3 with pip; ONNXRUNTIME_VERSION picks another release (1.20 or later).
set -euo pipefail
version="${ONNXRUNTIME_VERSION:-1.32.0}"
dir="${1:-${VATIC_CACHE:-$HOME/.cache/vatic}/onnxruntime/$version}"
lib="$dir/libonnxruntime.so"
if [ -s "$lib" ]; then
  echo "$lib"
  exit 0
fi
mkdir -p "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$work" "onnxruntime==$version" >&2
wheel="$(ls "$work"/onnxruntime-*.whl)"
# The wheel holds the library as onnxruntime/capi/libonnxruntime.so.<version>.
part="$(mktemp "$dir/.libonnxruntime.so.XXXXXX")"
trap 'rm -rf "$work" "$part"' EXIT
python3 - "$wheel" "$part" <<'PY'
import shutil, sys, zipfile
wheel, part = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not names:
        sys.exit(f"{wheel} holds no onnxruntime/capi/libonnxruntime.so*")
    with z.open(names[0]) as src, open(part, "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
# mktemp made it private; every user of the machine (or image) loads it. A rename is atomic: a
# run beside this one (tests start it in parallel) sees no half file.
chmod 0644 "$part"
mv "$part" "$lib"
echo "installed ONNX Runtime $version" >&2
echo "$lib"
