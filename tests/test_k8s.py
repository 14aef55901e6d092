"""deploy/k8s: the built manifests validate offline (scripts/k8s_check.py), every role of
bin/switchyard runs from the one image with the right probes, and what scales them is
wired: PodDisruptionBudgets, the web HPA, one KEDA ScaledObject per pool whose query runs
on the real schema and counts the pool's open work."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from scripts import k8s_check
from tests.kernel import django_tasks
from tests.support import ROOT

BASE, OVERLAY = k8s_check.K8S / "base", k8s_check.K8S / "overlays" / "example"
ROLES = {"web", "stream", "worker-priority", "worker-default", "worker-low", "beat", "migrate"}
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def docs() -> list[Doc]:
    return k8s_check.build(OVERLAY)


def of_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(doc: Doc) -> Doc:
    template = k8s_check.pod_template(doc)
    assert template is not None
    [only] = template["spec"]["containers"]
    return only


def test_base_and_overlay_validate_against_the_api_schemas() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/k8s_check.py"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deploy/k8s/overlays/example: 23 objects, 0 problems" in result.stdout


def test_a_wrong_field_or_an_unsupported_kustomization_fails_the_check(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(k8s_check.K8S, copy)
    web = copy / "base" / "web.yaml"
    web.write_text(web.read_text().replace("containerPort: 8000", "containerPort: 8000\n              hostPortt: 1"))
    problems = k8s_check.validate(k8s_check.build(copy / "overlays" / "example"))
    assert any("Deployment/switchyard-web" in p and "hostPortt" in p for p in problems), problems

    kustomization = copy / "overlays" / "example" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text() + "patches:\n  - path: x.yaml\n")
    with pytest.raises(k8s_check.CheckError, match="patches"):
        k8s_check.build(copy / "overlays" / "example")


def test_every_role_runs_from_the_one_image_as_the_image_user(docs: list[Doc]) -> None:
    workloads = [d for d in docs if k8s_check.pod_template(d) is not None]
    roles = {container(d)["args"][0] for d in workloads}
    assert roles == ROLES
    usage = (ROOT / "bin" / "switchyard").read_text()
    assert all(f"\n  {role} " in usage for role in ROLES)  # bin/switchyard knows each role
    for doc in workloads:
        spec = k8s_check.pod_template(doc)["spec"]  # type: ignore[index]
        assert container(doc)["image"] == "registry.example.com/switchyard:1.0.0", doc["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # USER 10001:10001 in the Dockerfile
        assert container(doc)["securityContext"]["readOnlyRootFilesystem"] is True
        env = container(doc)["envFrom"]
        assert {"configMapRef": {"name": "switchyard-config"}} in env
        assert {"secretRef": {"name": "switchyard-secrets"}} in env
    assert "USER 10001:10001" in (ROOT / "Dockerfile").read_text()


def test_probes_use_healthz_readyz_and_worker_health(docs: list[Doc]) -> None:
    deployments = of_kind(docs, "Deployment")
    for role in ("web", "stream"):
        probes = container(deployments[f"switchyard-{role}"])
        assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert probes["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for queue in ("priority", "default", "low"):
        worker = container(deployments[f"switchyard-worker-{queue}"])
        assert worker["args"] == [f"worker-{queue}"]
        command = ["bin/switchyard", "manage", "worker_health", "--queue", queue]
        assert worker["livenessProbe"]["exec"]["command"] == command
        assert worker["startupProbe"]["exec"]["command"] == command
        grace = k8s_check.pod_template(deployments[f"switchyard-worker-{queue}"])["spec"]  # type: ignore[index]
        assert grace["terminationGracePeriodSeconds"] > 120  # TASK_TIME_LIMIT: running calls finish
    beat = deployments["switchyard-beat"]
    assert (beat["spec"]["replicas"], beat["spec"]["strategy"]["type"]) == (1, "Recreate")


def test_disruption_budgets_autoscalers_and_the_migration_job(docs: list[Doc]) -> None:
    deployments = of_kind(docs, "Deployment")
    selectors = {name: d["spec"]["selector"]["matchLabels"] for name, d in deployments.items()}
    budgets = of_kind(docs, "PodDisruptionBudget")
    assert set(budgets) == set(deployments) - {"switchyard-beat"}
    for name, budget in budgets.items():
        assert budget["spec"]["selector"]["matchLabels"] == selectors[name]
    hpa = of_kind(docs, "HorizontalPodAutoscaler")["switchyard-web"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    scaled = of_kind(docs, "ScaledObject")
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == {
        f"switchyard-worker-{q}" for q in ("priority", "default", "low")
    }
    [job] = of_kind(docs, "Job").values()
    assert container(job)["args"] == ["migrate"] and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"switchyard"}


@pytest.mark.django_db
def test_each_scaled_object_query_counts_its_pools_open_work(docs: list[Doc], make_tenant: Any) -> None:
    tenant = make_tenant()
    for priority, n in (("high", 1), ("normal", 2), ("low", 3)):
        for i in range(n):
            body = {"prompt": f"scale {priority} {i}", "priority": priority}
            assert tenant.client.post("/api/v1/ai-tasks/", body, format="json").status_code == 202
    django_tasks.shout.enqueue("x")  # a product @task on queue low
    # priority: one high task and the new user's two emails (users.emails); low: three low
    # tasks and the @task.
    expected = {"priority": 1 + 2, "default": 2, "low": 3 + 1}
    counts = {}
    for scaled in of_kind(docs, "ScaledObject").values():
        [trigger] = [t for t in scaled["spec"]["triggers"] if t["type"] == "postgresql"]
        with connection.cursor() as cursor:
            cursor.execute(trigger["metadata"]["query"])
            counts[scaled["spec"]["scaleTargetRef"]["name"].removeprefix("switchyard-worker-")] = cursor.fetchone()[0]
    assert counts == expected
