"""Triton's own Python client (tritonclient.http) against vatic: the api in standalone mode and a
worker on its own. Checks health, metadata, get_model_config, statistics, and infer with JSON, with
binary tensors and with gzip-compressed bodies, comparing outputs to the onnxruntime reference of the demo model.

Usage: triton_client.py <target-dir>   (the folder holding the vatic-api and vatic-worker binaries)
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parents[2]
MODEL = "breast_cancer"


def start(cmd, ready_message):
    """Starts a vatic binary on 127.0.0.1:0 and returns (process, address) from its JSON log."""
    env = dict(os.environ, VATIC_LOG__FORMAT="json")
    env.pop("RUST_LOG", None)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("message") == ready_message:
            return proc, event["addr"]
        if time.time() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not report '{ready_message}'")


def wait_ready(client):
    for _ in range(600):
        try:
            if client.is_server_ready():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def check(url, reference, results):
    client = httpclient.InferenceServerClient(url=url)
    wait_ready(client)

    def case(name, fn):
        try:
            fn()
            results.append((f"{url} {name}", None))
        except Exception as e:  # report every failure, not only the first
            results.append((f"{url} {name}", e))

    rows = np.array(reference["inputs"][:4], dtype=np.float32)
    want_probs = np.array(reference["probabilities"][:4], dtype=np.float32)
    want_label = np.array(reference["label"][:4], dtype=np.int64)

    def health():
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(MODEL)
        assert client.is_model_ready(MODEL, model_version="1")
        assert not client.is_model_ready("no_such_model")

    def metadata():
        meta = client.get_model_metadata(MODEL)
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 30]}, meta
        server = client.get_server_metadata()
        assert "binary_tensor_data" in server["extensions"], server

    def config():
        cfg = client.get_model_config(MODEL)
        # Chosen by the load-time profile, within the worker's max_batch_size of 32.
        assert 1 <= cfg["max_batch_size"] <= 32, cfg
        assert cfg["input"][0] == {"name": "input", "data_type": "TYPE_FP32", "dims": [30]}, cfg
        assert {o["name"] for o in cfg["output"]} == {"probabilities", "label"}, cfg

    def infer(binary, name_outputs, compression=None):
        def run():
            inp = httpclient.InferInput("input", list(rows.shape), "FP32")
            inp.set_data_from_numpy(rows, binary_data=binary)
            outputs = None
            if name_outputs:
                outputs = [
                    httpclient.InferRequestedOutput("probabilities", binary_data=binary),
                    httpclient.InferRequestedOutput("label", binary_data=binary),
                ]
            result = client.infer(
                MODEL,
                [inp],
                outputs=outputs,
                request_id="interop-1",
                request_compression_algorithm=compression,
                response_compression_algorithm=compression,
            )
            np.testing.assert_allclose(result.as_numpy("probabilities"), want_probs, atol=1e-5)
            np.testing.assert_array_equal(result.as_numpy("label"), want_label)
            assert result.get_response()["id"] == "interop-1"
        return run

    def stats():
        s = client.get_inference_statistics(MODEL)
        assert s["model_stats"][0]["inference_count"] >= 16, s

    case("health", health)
    case("metadata", metadata)
    case("get_model_config", config)
    case("infer json", infer(False, True))
    case("infer binary", infer(True, True))
    case("infer default outputs", infer(False, False))
    case("infer binary gzip", infer(True, True, "gzip"))
    case("statistics", stats)
    client.close()


def main():
    target = Path(sys.argv[1])
    reference = json.loads((ROOT / "models" / MODEL / "reference.json").read_text())
    api, api_addr = start(
        [
            str(target / "vatic-api"),
            "--standalone",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        "api listening",
    )
    worker, worker_addr = start(
        [
            str(target / "vatic-worker"),
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--models-dir",
            "models",
        ],
        "worker listening",
    )
    results = []
    try:
        check(api_addr, reference, results)
        check(worker_addr, reference, results)
    finally:
        for proc in (api, worker):
            proc.terminate()
            proc.wait(timeout=30)
    failed = [(name, err) for name, err in results if err is not None]
    for name, err in results:
        print(f"{'ok  ' if err is None else 'FAIL'} {name}" + ("" if err is None else f": {err!r}"))
    print(f"interop: {len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
