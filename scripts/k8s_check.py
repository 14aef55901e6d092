"""Offline check of deploy/k8s (``make k8s-check``, tests/test_k8s.py).

Builds each kustomization with a small, strict subset of kustomize (resources, namespace,
images, replicas, labels; any other field is refused, so nothing the check does not
understand can slip into a manifest), validates every built object against the Kubernetes
API schemas of kubernetes-validate (strict: unknown fields are errors), and checks the
KEDA objects (their CRDs are not in those schemas) for the fields KEDA needs and for
references that resolve.

    python scripts/k8s_check.py [KUSTOMIZATION_DIR ...]   # default: base and every overlay
"""

# ruff: noqa: T201 - a command-line script talks to its user through print

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.37.0"
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "replicas", "labels"}
CLUSTER_SCOPED = {"Namespace"}
KEDA_TRIGGERS = {"postgresql": {"query", "targetQueryValue"}, "redis": {"listName", "listLength"}}

Doc = dict[str, Any]


class CheckError(Exception):
    pass


def build(directory: Path) -> list[Doc]:
    """The objects ``kustomize build directory`` would print (for the supported subset)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise CheckError(f"{directory}: kustomization fields not supported by the check: {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            docs += build(path)
        else:
            docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    docs = copy.deepcopy(docs)
    for pair in kustomization.get("labels", []):
        if pair.get("includeSelectors") or pair.get("includeTemplates"):
            raise CheckError(f"{directory}: labels with includeSelectors/includeTemplates are not supported")
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(pair["pairs"])
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        new = f"{image.get('newName', image['name'])}:{image['newTag']}"
        for container in _containers(docs):
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = new
    for replica in kustomization.get("replicas", []):
        targets = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == replica["name"]]
        if not targets:
            raise CheckError(f"{directory}: replicas for unknown Deployment {replica['name']!r}")
        for doc in targets:
            doc["spec"]["replicas"] = replica["count"]
    return docs


def _containers(docs: list[Doc]) -> list[Doc]:
    found = []
    for doc in docs:
        template = pod_template(doc)
        if template is not None:
            found += template["spec"].get("initContainers", []) + template["spec"]["containers"]
    return found


def pod_template(doc: Doc) -> Doc | None:
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        template: Doc = doc["spec"]["template"]
        return template
    return None


def validate(docs: list[Doc]) -> list[str]:
    """Problems found, as lines; empty when every object is valid."""
    problems: list[str] = []
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        label = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("keda.sh/"):
            problems += [f"{label}: {p}" for p in _keda(doc, names)]
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{label}: {exc.message} at {'.'.join(str(p) for p in exc.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{label}: no schema for {doc['apiVersion']} {doc['kind']}")
    return problems


def _keda(doc: Doc, names: set[tuple[str, str]]) -> list[str]:
    spec = doc.get("spec", {})
    if doc["kind"] == "TriggerAuthentication":
        refs = spec.get("secretTargetRef", [])
        return [] if refs and all({"parameter", "name", "key"} <= set(ref) for ref in refs) else ["bad secretTargetRef"]
    if doc["kind"] != "ScaledObject":
        return [f"unexpected KEDA kind {doc['kind']}"]
    problems = []
    target = spec.get("scaleTargetRef", {}).get("name")
    if ("Deployment", target) not in names:
        problems.append(f"scaleTargetRef {target!r} is not a Deployment of the build")
    if not 0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100):
        problems.append("minReplicaCount above maxReplicaCount")
    if not spec.get("triggers"):
        problems.append("no triggers")
    for trigger in spec.get("triggers", []):
        needed = KEDA_TRIGGERS.get(trigger.get("type", ""))
        if needed is None:
            problems.append(f"trigger type {trigger.get('type')!r} not checked by this script")
            continue
        missing = needed - set(trigger.get("metadata", {}))
        if missing:
            problems.append(f"trigger {trigger['type']} misses {sorted(missing)}")
        auth = trigger.get("authenticationRef", {}).get("name")
        if auth is not None and ("TriggerAuthentication", auth) not in names:
            problems.append(f"authenticationRef {auth!r} does not exist")
    return problems


def kustomizations() -> list[Path]:
    return sorted(path.parent for path in K8S.rglob("kustomization.yaml"))


def main(argv: list[str]) -> int:
    directories = [Path(arg) for arg in argv] or kustomizations()
    failed = False
    for directory in directories:
        try:
            docs = build(directory)
        except (CheckError, OSError, yaml.YAMLError, KeyError) as exc:
            print(f"k8s: {directory}: {exc}")
            failed = True
            continue
        problems = validate(docs)
        for problem in problems:
            print(f"k8s: {directory.relative_to(ROOT)}: {problem}")
        failed = failed or bool(problems)
        print(f"k8s: {directory.relative_to(ROOT)}: {len(docs)} objects, {len(problems)} problems")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
