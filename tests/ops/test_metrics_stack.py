"""/metrics on a running stack: gunicorn with two workers (bin/switchyard web, the
defaults: no PROMETHEUS_MULTIPROC_DIR given), a real default-queue worker with its own
metrics port (PORT, as honcho gives it), tasks running. Every family has live values,
and every scrape shows the same totals whichever gunicorn worker answers."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from decimal import Decimal

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from billing import services as billing
from llm.models import AITask
from tests.conftest import Tenant
from tests.pipeline.conftest import wait_for
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
TOKEN = "test-metrics-token-long-enough-for-production-checks"  # settings_test


def scrape(url: str, token: str | None = TOKEN) -> dict[str, list[tuple[dict[str, str], float]]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for found, v in samples.get(name, []) if all(found.get(k) == x for k, x in labels.items()))


def test_every_family_live_and_the_same_whichever_process_answers(
    start_web: Callable[..., str], start_worker: Callable[..., object], make_tenant: Callable[..., Tenant]
) -> None:
    web = start_web(workers=2)
    worker_port = free_port()
    start_worker("default", PORT=str(worker_port))
    tenant, broke = make_tenant(), make_tenant()
    billing.budget_set(organization_id=uuid.UUID(broke.organization_id), limit_usd=Decimal("0"))

    def post(who: Tenant, prompt: str, **body: object) -> httpx.Response:
        return httpx.post(
            f"{web}/api/v1/ai-tasks/",
            json={"prompt": prompt, **body},
            headers={"Authorization": f"Bearer {who.issued.key}"},
            timeout=10,
        )

    posts = 0
    running = []
    for n in range(5):
        response = post(tenant, f"task {n} #fake:sleep=3500")
        posts += 1
        assert response.status_code == 202, response.text
        running.append(response.json()["id"])
    failing = post(tenant, "bad request #fake:error=400")
    posts += 1
    waiting = [post(tenant, f"nobody serves low {n}", priority="low") for n in range(2)]  # no low worker
    posts += 2
    assert post(broke, "no budget").status_code == 402
    posts += 1

    # While the default tasks run: the queue families and open tasks, read from PostgreSQL.
    wait_for(lambda: AITask.objects.filter(status="processing").count() >= 1, timeout=30)
    live = scrape(f"{web}/metrics")
    assert total(live, "switchyard_open_tasks", status="processing", queue="default") >= 1
    assert total(live, "switchyard_queue_depth", queue="low") == 2
    assert total(live, "switchyard_queue_oldest_age_seconds", queue="low") > 0
    assert total(live, "switchyard_queue_oldest_age_seconds", queue="priority") == 0
    assert total(live, "switchyard_outbox_backlog") >= 0
    assert "switchyard_outbox_oldest_unsent_seconds" in live
    assert total(live, "switchyard_db_connections", role="web") >= 1  # the scrape's own connection
    assert total(live, "switchyard_db_max_connections") > 0
    assert all(v == 1 for _, v in live["switchyard_scrape_source_up"])

    ids = [*running, failing.json()["id"]]
    wait_for(lambda: AITask.objects.filter(id__in=ids, status__in=["done", "failed"]).count() == len(ids), timeout=40)
    assert post(tenant, "task 0 #fake:sleep=3500").json()["cached"] is True  # a cache hit
    posts += 1

    # The same totals on every scrape (each may be answered by either gunicorn worker).
    route = {"method": "POST", "route": "api/v1/ai-tasks/"}
    scrapes = [scrape(f"{web}/metrics") for _ in range(8)]
    totals = {total(s, "switchyard_http_requests_total", **route) for s in scrapes}
    assert totals == {posts}, totals
    assert {total(s, "switchyard_http_request_seconds_count", **route) for s in scrapes} == {posts}
    last = scrapes[-1]
    assert total(last, "switchyard_http_requests_total", **route, status="402") == 1
    assert total(last, "switchyard_budget_rejections_total") == 1
    assert total(last, "switchyard_api_errors_total", code="budget_exhausted") == 1
    assert total(last, "switchyard_response_cache_lookups_total", result="hit") == 1
    assert total(last, "switchyard_response_cache_lookups_total", result="miss") == 9  # every submit but the hit
    routes = {labels["route"] for labels, _ in last["switchyard_http_requests_total"]}
    assert not [r for r in routes if re.search(r"[0-9a-f]{8}-[0-9a-f]{4}", r)], routes  # templates, no ids

    # The worker's own port: task outcomes, attempts, durations, provider latency and TTFT.
    mine = scrape(f"http://127.0.0.1:{worker_port}/metrics", token=None)
    by = {"queue": "default", "model": "fake-small"}
    assert total(mine, "switchyard_task_attempts_total", **by) == 6
    assert total(mine, "switchyard_task_outcomes_total", **by, outcome="done", error_code="") == 5
    failed = [labels for labels, v in mine["switchyard_task_outcomes_total"] if labels["outcome"] == "failed" and v]
    assert len(failed) == 1 and failed[0]["error_code"], failed
    assert total(mine, "switchyard_task_attempt_seconds_count", **by) == 6
    assert total(mine, "switchyard_task_queue_wait_seconds_count", queue="default") == 6
    assert total(mine, "switchyard_task_e2e_seconds_count", **by) == 5
    assert total(mine, "switchyard_task_e2e_seconds_sum", **by) >= 5 * 1.5
    assert total(mine, "switchyard_provider_call_seconds_count", provider="fake", outcome="ok") == 5
    assert total(mine, "switchyard_provider_call_seconds_count", provider="fake", outcome="error") == 1
    assert total(mine, "switchyard_provider_time_to_first_token_seconds_count", provider="fake") == 5
    # The broker's list stays short (the gate), the pending count comes from PostgreSQL.
    assert total(scrape(f"{web}/metrics"), "switchyard_queue_depth", queue="low") == 2
    assert len(waiting) == 2
