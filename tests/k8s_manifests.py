"""Validates deploy/kubernetes without a cluster: the Kubernetes objects
against the Kubernetes schemas (kubernetes-validate, strict: unknown fields
fail), the InferencePool against its CRD's schema stored in
deploy/kubernetes/schemas (jsonschema), and checks that the manifests agree
with each other and with the server: the pool selects the Deployment's pods
on the port r1serve listens on, the pods carry the engine-type label the
picker's engineConfigs entry is keyed by, that entry names metrics r1serve
exports (src/metrics.rs), and the README's apply commands name these files.

Argument: the repository root. Prints the number of objects checked.
"""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

ROOT = Path(sys.argv[1])
DEPLOY = ROOT / "deploy" / "kubernetes"
CHECKED = 0


def fail(message):
    print(message)
    sys.exit(1)


def documents(name):
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def main():
    global CHECKED
    manifests = sorted(p.name for p in DEPLOY.glob("*.yaml"))
    validate = Path(sys.executable).with_name("kubernetes-validate")
    core = [DEPLOY / m for m in manifests if m != "inferencepool.yaml"]
    run = subprocess.run(
        [str(validate), "--strict", "--quiet", *map(str, core)],
        capture_output=True, text=True,
    )
    if run.returncode != 0:
        fail(f"kubernetes-validate:\n{run.stdout}{run.stderr}")
    objects = {d["kind"]: d for m in manifests for d in documents(m)}
    CHECKED = len(objects)

    schema = json.loads((DEPLOY / "schemas" / "inferencepool-v1.json").read_text())
    pool = objects["InferencePool"]
    jsonschema.validate(pool, schema)

    pod = objects["Deployment"]["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for key, value in pool["spec"]["selector"]["matchLabels"].items():
        if labels.get(key) != value:
            fail(f"the pool selects {key}={value}, the pods have {labels.get(key)!r}")
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    port = int(args[args.index("--port") + 1])
    if pool["spec"]["targetPorts"][0]["number"] != port:
        fail(f"the pool targets port {pool['spec']['targetPorts']}, r1serve listens on {port}")
    if container["readinessProbe"]["httpGet"]["path"] != "/health":
        fail("readiness must be /health")

    epp = yaml.safe_load(objects["ConfigMap"]["data"]["epp-config.yaml"])
    types = [p["type"] for p in epp["plugins"]]
    if "metrics-data-source" not in types:
        fail("the picker has no metrics-data-source to scrape /metrics")
    (metrics_plugin,) = [p for p in epp["plugins"] if p["type"] == "core-metrics-extractor"]
    params = metrics_plugin["parameters"]
    # The parameters llm-d's core-metrics-extractor reads (its
    # engineConfigParams); an unknown key would be silently ignored there.
    known = {
        "name", "queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "loraSpec",
        "cacheInfoSpec", "cacheBlockSizeLabelName", "cacheNumBlocksLabelName",
        "cacheBlockSizeSpec", "cacheNumBlocksSpec",
    }
    if labels.get(params["engineLabelKey"]) != "r1serve":
        fail(f"pods lack {params['engineLabelKey']}: r1serve")
    (entry,) = [e for e in params["engineConfigs"] if e["name"] == "r1serve"]
    if set(entry) - known:
        fail(f"engineConfigs keys the extractor does not read: {sorted(set(entry) - known)}")
    exported = (ROOT / "src" / "metrics.rs").read_text()
    for key, metric in entry.items():
        if key != "name" and f'"{metric}"' not in exported:
            fail(f"engineConfigs {key}: {metric} is not a metric r1serve exports")

    readme = (ROOT / "README.md").read_text()
    for manifest in manifests:
        if f"kubectl apply -f deploy/kubernetes/{manifest}" not in readme:
            fail(f"README does not apply deploy/kubernetes/{manifest}")
    print(CHECKED)


main()
