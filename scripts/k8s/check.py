"""Checks deploy/k8s without a cluster: builds the base and every overlay the way kustomize does
for the features they use (resources, namespace, labels, images, replicas, JSON 6902 patches),
validates every object against the Kubernetes schemas with kubernetes-validate (strict: an
unknown field is an error), does the same for the Secrets deploy/k8s/secrets.sh prints, and
checks what the schemas cannot: that Services, disruption budgets and autoscalers point at the
Deployments, that every Secret and ConfigMap key a pod reads exists, and that the drain fits the
grace period.

Usage: check.py VATICCTL   (run with a Python that has kubernetes-validate and PyYAML)
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
VERSION = "1.30.0"
CLUSTER_SCOPED = {"Namespace"}


def load(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pointer(path):
    return [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]


def apply_op(doc, op):
    *parents, last = pointer(op["path"])
    node = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        last = len(node) if last == "-" else int(last)
    if op["op"] == "remove":
        del node[last]
    elif op["op"] == "replace":
        if isinstance(node, list):
            assert last < len(node), op
        else:
            assert last in node, f"replace of a path that does not exist: {op}"
        node[last] = op["value"]
    elif op["op"] == "add":
        if isinstance(node, list):
            node.insert(last, op["value"])
        else:
            node[last] = op["value"]
    else:
        raise SystemExit(f"unsupported patch op {op}")


def containers(doc):
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec")
    if not pod:
        return []
    return pod.get("containers", []) + pod.get("initContainers", [])


def build(folder):
    k = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "replicas", "patches"}
    unknown = set(k) - known
    assert not unknown, f"{folder}: kustomization fields this check does not model: {unknown}"
    docs = []
    for res in k.get("resources", []):
        path = folder / res
        assert path.exists(), f"{folder}/kustomization.yaml: resource {res} does not exist"
        docs += build(path) if path.is_dir() else load(path)
    for label in k.get("labels", []):
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    if "namespace" in k:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = k["namespace"]
    for image in k.get("images", []):
        used = False
        for d in docs:
            for c in containers(d):
                if c["image"].split(":")[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image.get('newTag', 'latest')}"
                    used = True
        assert used, f"{folder}: image {image['name']} is used by no container"
    for r in k.get("replicas", []):
        match = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == r["name"]]
        assert match, f"{folder}: replicas for {r['name']}, which is no Deployment"
        match[0]["spec"]["replicas"] = r["count"]
    for patch in k.get("patches", []):
        t = patch["target"]
        match = [d for d in docs if d["kind"] == t["kind"] and d["metadata"]["name"] == t.get("name", d["metadata"]["name"])]
        assert match, f"{folder}: a patch targets {t}, which is not there"
        for doc in match:
            for op in yaml.safe_load(patch["patch"]):
                apply_op(doc, op)
    return docs


def validate(docs, where):
    for d in docs:
        errors = []
        try:
            kubernetes_validate.validate(d, VERSION, strict=True)
        except kubernetes_validate.utils.ValidationError as e:
            errors.append(f"{'.'.join(str(p) for p in e.path)}: {e.message}")
        except kubernetes_validate.utils.SchemaNotFoundError as e:
            errors.append(f"no schema: {e}")
        assert not errors, f"{where}: {d['kind']} {d['metadata'].get('name')}: {errors}"


def check_references(docs, secrets, where):
    by = lambda kind: {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}
    deployments, services, configmaps = by("Deployment"), by("Service"), by("ConfigMap")
    secret_keys = {s["metadata"]["name"]: set(s["data"]) for s in secrets}

    def pod_labels(name):
        return deployments[name]["spec"]["template"]["metadata"]["labels"]

    # The longest a request may take once the drain has begun: the api's worker_timeout_ms
    # (60 s), a worker's batching timeout_ms (30 s).
    longest = {"vatic-api": 60, "vatic-worker": 30}
    for name, dep in deployments.items():
        assert "replicas" not in dep["spec"], f"{where}: {name} sets replicas, which its autoscaler owns"
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels(name).items(), f"{where}: {name}'s selector"
        pod = dep["spec"]["template"]["spec"]
        grace = pod["terminationGracePeriodSeconds"]
        for c in pod["containers"]:
            pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
            pause = int(pre[1]) if pre[:1] == ["sleep"] else 0
            # The drain after SIGTERM is drain_secs, 5 s in config/api.toml and worker.toml.
            assert pause >= 1 and grace >= pause + 5 + longest[name], f"{where}: {name}: preStop {pause} s, grace {grace} s"
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["key"] in configmaps[ref["name"]]["data"], f"{where}: {name} reads {ref}"
        for vol in pod.get("volumes", []):
            if "secret" in vol:
                assert vol["secret"]["secretName"] in secret_keys, f"{where}: {name} mounts {vol}"
        mounted = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in mounted, f"{where}: {name} mounts the volume {m['name']}, not declared"
            files = [a for e in c.get("env", []) for a in [e.get("value", "")] if a.startswith(("/certs/", "/run/secrets/"))]
            files += [a for p in ("startupProbe", "livenessProbe", "readinessProbe")
                      for a in c.get(p, {}).get("exec", {}).get("command", []) if a.startswith("/certs/")]
            for f in files:
                mount = next(m for m in c["volumeMounts"] if f.startswith(m["mountPath"] + "/"))
                source = mounted[mount["name"]]["secret"]
                secret = source["secretName"]
                path = f[len(mount["mountPath"]) + 1:]
                items = {i["path"]: i["key"] for i in source.get("items", [])} or {k: k for k in secret_keys[secret]}
                assert path in items, f"{where}: {name} reads {f}, which the volume does not project"
                assert items[path] in secret_keys[secret], f"{where}: {name} reads {f}, not in Secret {secret}"
    for name, svc in services.items():
        sel = svc["spec"]["selector"]
        targets = [d for d in deployments if sel.items() <= pod_labels(d).items()]
        assert targets, f"{where}: Service {name} selects no Deployment"
        ports = {p["name"] for c in deployments[targets[0]]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{where}: Service {name} port {p}"
    for pdb in by("PodDisruptionBudget").values():
        sel = pdb["spec"]["selector"]["matchLabels"]
        assert any(sel.items() <= pod_labels(d).items() for d in deployments), f"{where}: {pdb['metadata']['name']}"
    for hpa in by("HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments, f"{where}: {hpa['metadata']['name']}"
    for ing in by("Ingress").values():
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] in services, f"{where}: Ingress backend"
        for tls in ing["spec"]["tls"]:
            assert tls["secretName"] in secret_keys, f"{where}: Ingress TLS Secret {tls['secretName']}"
        ns = ing["metadata"].get("namespace")
        ssl_secret = ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-ssl-secret"]
        if ns:
            assert ssl_secret == f"{ns}/vatic-tls", f"{where}: proxy-ssl-secret {ssl_secret} in namespace {ns}"


def main():
    vaticctl = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([str(K8S / "secrets.sh"), "vatic", "vatic.example.com", f"{tmp}/ca"],
                             env=dict(os.environ, VATICCTL=vaticctl), check=True,
                             capture_output=True, text=True)
        secrets = [d for d in yaml.safe_load_all(out.stdout) if d]
        assert (Path(tmp) / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
        again = subprocess.run([str(K8S / "secrets.sh"), "vatic", "vatic.example.com", f"{tmp}/ca"],
                               env=dict(os.environ, VATICCTL=vaticctl), capture_output=True, text=True)
        assert again.returncode == 1 and "already holds a CA" in again.stderr, again
    validate(secrets, "secrets.sh")
    print(f"deploy/k8s/secrets.sh: {len(secrets)} Secrets valid")
    base = build(K8S / "base")
    validate(base, "base")
    check_references(base, secrets, "base")
    print(f"deploy/k8s/base: {len(base)} objects valid against Kubernetes {VERSION}")
    for overlay in sorted((K8S / "overlays").iterdir()):
        docs = build(overlay)
        validate(docs, overlay.name)
        check_references(docs, secrets, overlay.name)
        print(f"deploy/k8s/overlays/{overlay.name}: {len(docs)} objects valid")
    for f in sorted((K8S / "monitoring").glob("*.yaml")):
        load(f)


if __name__ == "__main__":
    main()
