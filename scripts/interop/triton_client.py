"""Triton's own Python client (tritonclient.http) against vatic: the api in standalone mode and a
worker on its own, over plain HTTP; then a standalone api serving HTTPS with API keys required,
which the client reaches with ssl=True, trusting the CA that `vaticctl certs init` made, and
with a predictor key sent as `Authorization: Bearer` through `headers=` on every call. Checks
health, metadata, get_model_config, statistics, and infer with JSON, with binary tensors and with
gzip-compressed bodies, comparing outputs to the onnxruntime reference of the demo model; over
HTTPS also that a call without the key gets 401 and that a client trusting another CA fails the
handshake.

Usage: triton_client.py <target-dir>   (the folder holding vatic-api, vatic-worker and vaticctl)
"""

import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import gevent.ssl
import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = Path(__file__).resolve().parents[2]
MODEL = "breast_cancer"
# The first admin key of the api with keys required: it only makes the predictor key the
# checks use.
ADMIN_KEY = "interop-admin-key-0123456789abcdef"


def start(cmd, ready_message, cwd=ROOT, env=None):
    """Starts a vatic binary on 127.0.0.1:0 and returns (process, address, scheme) from its JSON
    log, which goes on being read so the server never blocks on a full pipe."""
    env = dict(os.environ, VATIC_LOG__FORMAT="json", **(env or {}))
    env.pop("RUST_LOG", None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    for line in proc.stdout:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("message") == ready_message:
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, event["addr"], event.get("scheme", "http")
        if time.time() > deadline:
            break
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not report '{ready_message}'")


def wait_ready(client, headers=None):
    for _ in range(600):
        try:
            if client.is_server_ready(headers=headers):
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise RuntimeError("server did not become ready")


def case(results, name, fn):
    try:
        fn()
        results.append((name, None))
    except Exception as e:  # report every failure, not only the first
        results.append((name, e))


def https_options(ca):
    """tritonclient's arguments for HTTPS to a server whose certificate `ca` signed, as Triton's
    own examples pass them: the CA in ssl_options, and gevent's context with secure defaults
    (certificate and host name checked)."""
    return {
        "ssl": True,
        "ssl_options": {"ca_certs": str(ca)},
        "ssl_context_factory": gevent.ssl.create_default_context,
    }


def check(label, url, reference, results, headers=None, **client_args):
    """Every call of the client against the server at `url`, each sending `headers`."""
    client = httpclient.InferenceServerClient(url=url, **client_args)

    def sent():
        # A copy per call: infer() adds its own headers (Inference-Header-Content-Length,
        # Content-Encoding, Accept-Encoding) to the dict it is given.
        return None if headers is None else dict(headers)

    wait_ready(client, sent())

    rows = np.array(reference["inputs"][:4], dtype=np.float32)
    want_probs = np.array(reference["probabilities"][:4], dtype=np.float32)
    want_label = np.array(reference["label"][:4], dtype=np.int64)

    def health():
        assert client.is_server_live(headers=sent())
        assert client.is_server_ready(headers=sent())
        assert client.is_model_ready(MODEL, headers=sent())
        assert client.is_model_ready(MODEL, model_version="1", headers=sent())
        assert not client.is_model_ready("no_such_model", headers=sent())

    def metadata():
        meta = client.get_model_metadata(MODEL, headers=sent())
        assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 30]}, meta
        server = client.get_server_metadata(headers=sent())
        assert "binary_tensor_data" in server["extensions"], server

    def config():
        cfg = client.get_model_config(MODEL, headers=sent())
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
                headers=sent(),
                request_compression_algorithm=compression,
                response_compression_algorithm=compression,
            )
            np.testing.assert_allclose(result.as_numpy("probabilities"), want_probs, atol=1e-5)
            np.testing.assert_array_equal(result.as_numpy("label"), want_label)
            assert result.get_response()["id"] == "interop-1"
        return run

    def stats():
        s = client.get_inference_statistics(MODEL, headers=sent())
        assert s["model_stats"][0]["inference_count"] >= 16, s

    for name, fn in [
        ("health", health),
        ("metadata", metadata),
        ("get_model_config", config),
        ("infer json", infer(False, True)),
        ("infer binary", infer(True, True)),
        ("infer default outputs", infer(False, False)),
        ("infer binary gzip", infer(True, True, "gzip")),
        ("statistics", stats),
    ]:
        case(results, f"{label} {name}", fn)
    client.close()


def check_refusals(label, url, other_ca, results, **client_args):
    """Without the key the api answers 401; a client trusting `other_ca` fails the handshake."""

    def without_key():
        client = httpclient.InferenceServerClient(url=url, **client_args)
        rows = np.zeros((1, 30), dtype=np.float32)
        inp = httpclient.InferInput("input", list(rows.shape), "FP32")
        inp.set_data_from_numpy(rows)
        calls = [
            lambda: client.get_model_metadata(MODEL),
            lambda: client.infer(MODEL, [inp]),
        ]
        for call in calls:
            try:
                call()
            except InferenceServerException as e:
                assert e.status() == "401", (e.status(), e.message())
            else:
                raise AssertionError("answered without a key")
        assert not client.is_model_ready(MODEL)
        client.close()

    def another_ca():
        client = httpclient.InferenceServerClient(url=url, **https_options(other_ca))
        try:
            client.is_server_live()
        except ssl.SSLCertVerificationError as e:
            assert e.verify_message == "unable to get local issuer certificate", e
        else:
            raise AssertionError("a client trusting another CA completed the handshake")
        finally:
            client.close()

    case(results, f"{label} without the key: 401", without_key)
    case(results, f"{label} trusting another CA: handshake refused", another_ca)


def certs_init(target, folder):
    subprocess.run(
        [str(target / "vaticctl"), "certs", "init", str(folder)],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def predictor_key(target, url, ca):
    """A predictor key for the demo model, made with vaticctl and the first admin key."""
    env = dict(
        os.environ,
        VATIC_SERVER=f"https://{url}",
        VATIC_CACERT=str(ca),
        VATIC_API_KEY=ADMIN_KEY,
    )
    command = ["keys", "create", "--role", "predictor", "--models", MODEL, "--name", "interop"]
    made = subprocess.run(
        [str(target / "vaticctl"), *command],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return made.stdout.strip()


def main():
    target = Path(sys.argv[1]).resolve()
    reference = json.loads((ROOT / "models" / MODEL / "reference.json").read_text())
    listen = ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
    results = []
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            api, api_addr, _ = start(
                [str(target / "vatic-api"), "--standalone", *listen], "api listening"
            )
            procs.append(api)
            worker, worker_addr, _ = start(
                [str(target / "vatic-worker"), *listen, "--models-dir", "models"],
                "worker listening",
            )
            procs.append(worker)

            # HTTPS with keys required: a standalone api in a folder of its own (its database,
            # cache and spool), with the certificates of `vaticctl certs init`.
            certs, other = tmp / "certs", tmp / "other"
            certs_init(target, certs)
            certs_init(target, other)
            (tmp / "api").mkdir()
            secure, secure_addr, scheme = start(
                [
                    str(target / "vatic-api"),
                    "--standalone",
                    "--config",
                    str(ROOT / "config" / "standalone.toml"),
                    "--models-dir",
                    str(ROOT / "models"),
                    *listen,
                ],
                "api listening",
                cwd=tmp / "api",
                env={
                    "VATIC_TLS__CERT": str(certs / "api.crt"),
                    "VATIC_TLS__KEY": str(certs / "api.key"),
                    "VATIC_AUTH__ENABLED": "true",
                    "VATIC_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
                },
            )
            procs.append(secure)
            assert scheme == "https", scheme
            tls = https_options(certs / "ca.crt")
            with httpclient.InferenceServerClient(url=secure_addr, **tls) as client:
                wait_ready(client)
            key = predictor_key(target, secure_addr, certs / "ca.crt")

            check(f"http://{api_addr}", api_addr, reference, results)
            check(f"http://{worker_addr}", worker_addr, reference, results)
            label = f"https://{secure_addr} (key)"
            check(label, secure_addr, reference, results,
                  headers={"Authorization": f"Bearer {key}"}, **tls)
            check_refusals(f"https://{secure_addr}", secure_addr, other / "ca.crt", results, **tls)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    failed = [(name, err) for name, err in results if err is not None]
    for name, err in results:
        print(f"{'ok  ' if err is None else 'FAIL'} {name}" + ("" if err is None else f": {err!r}"))
    print(f"interop: {len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
