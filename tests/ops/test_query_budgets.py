"""Query budgets: every synchronous endpoint runs the same number of queries whatever the
size of the data behind it (N = 1 and N = 6), within its budget; and the budget
middleware logs and counts a breach."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import resolve
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from billing import services as billing
from contracts.billing import TokenUsage
from llm.models import AITask
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db
METRICS_AUTH = {"Authorization": "Bearer test-metrics-token-long-enough-for-production-checks"}  # settings_test


def _fill(tenant: Tenant, n: int) -> str:
    """n tasks (one open, to cancel) and n ledger rows for the organization; returns the open task's id."""
    org = uuid.UUID(tenant.organization_id)
    tasks = [
        AITask.objects.create(
            organization_id=org,
            prompt=f"task {i} " * 50,
            model="fake-small",
            max_tokens=16,
            status="done",
            result="x" * 500,
        )
        for i in range(n)
    ]
    for task in tasks:
        billing.usage_record_cache_hit(
            organization_id=org,
            api_key_id=uuid.UUID(tenant.api_key_id),
            task_id=task.id,
            model="fake-small",
            usage=TokenUsage(input_tokens=10, output_tokens=5),
        )
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "to be cancelled"}, format="json")
    assert response.status_code == 202, response.json()
    return str(response.json()["id"])


def _requests(open_task: str) -> dict[str, Callable[[Tenant], object]]:
    today = datetime.now(UTC).date().isoformat()
    usage = f"/api/v1/billing/usage/?start={today}&end={today}&group_by="
    return {
        "GET me": lambda t: t.client.get("/api/v1/me/"),
        "GET ai-tasks (list)": lambda t: t.client.get("/api/v1/ai-tasks/?limit=100"),
        "GET ai-task": lambda t: t.client.get(f"/api/v1/ai-tasks/{open_task}/"),
        "POST ai-tasks": lambda t: t.client.post("/api/v1/ai-tasks/", {"prompt": "one more task"}, format="json"),
        "GET budget": lambda t: t.client.get("/api/v1/billing/budget/"),
        "GET usage by day": lambda t: t.client.get(f"{usage}day"),
        "GET usage by model": lambda t: t.client.get(
            f"/api/v1/billing/usage/?start={today}&end={today}&group_by=model"
        ),
        "POST cancel": lambda t: t.client.post(f"/api/v1/ai-tasks/{open_task}/cancel/"),
    }


def _counts(tenant: Tenant, n: int) -> dict[str, int]:
    open_task = _fill(tenant, n)
    tenant.client.get("/api/v1/me/")  # the key's last_used_at is written at most once a minute: not counted
    counts = {}
    for name, call in _requests(open_task).items():
        with CaptureQueriesContext(connection) as queries:
            response = call(tenant)
        assert response.status_code < 400, (name, response.status_code)  # type: ignore[attr-defined]
        counts[name] = len(queries)
        view = resolve(response.wsgi_request.path).func  # type: ignore[attr-defined]
        budget = getattr(getattr(view, "view_class", None), "query_budget", settings.QUERY_BUDGET_DEFAULT)
        assert len(queries) <= budget, (name, len(queries), budget)  # within the view's own budget
    return counts


def test_every_endpoint_runs_the_same_queries_at_two_sizes(make_tenant: Callable[..., Tenant]) -> None:
    small = _counts(make_tenant(), 1)
    large = _counts(make_tenant(), 6)
    assert small == large, {name: (small[name], large[name]) for name in small if small[name] != large[name]}


def _breaches(route: str) -> float:
    return REGISTRY.get_sample_value("switchyard_query_budget_breaches_total", {"route": route}) or 0.0


def test_a_request_over_its_budget_is_logged_and_counted(client: Client, settings: object) -> None:
    """/metrics has no budget of its own (QUERY_BUDGET_DEFAULT) and runs its scrape-time queries."""
    settings.QUERY_BUDGET_DEFAULT = 0  # type: ignore[attr-defined]
    before = _breaches("metrics")
    with capture_logs() as logs:
        assert client.get("/metrics", headers=METRICS_AUTH).status_code == 200
    breach = [entry for entry in logs if entry["event"] == "query_budget_exceeded"]
    assert len(breach) == 1, logs
    assert breach[0]["route"] == "metrics"
    assert breach[0]["budget"] == 0
    assert breach[0]["queries"] >= 1
    assert breach[0]["log_level"] == "warning"
    assert _breaches("metrics") == before + 1


def test_within_budget_nothing_is_logged(client: Client) -> None:
    before = _breaches("metrics")
    with capture_logs() as logs:
        assert client.get("/metrics", headers=METRICS_AUTH).status_code == 200
    assert not [entry for entry in logs if entry["event"] == "query_budget_exceeded"]
    assert _breaches("metrics") == before


def test_lists_do_not_load_the_tasks_input(tenant: Tenant) -> None:
    """The prompt and the message list (a turn carries the whole transcript) are never read
    by the task list; the single read loads the prompt, not the messages."""
    open_task = _fill(tenant, 3)
    AITask.objects.filter(id=open_task).update(messages=[{"role": "user", "content": "to be cancelled"}])

    def columns_read(path: str) -> set[str]:
        with CaptureQueriesContext(connection) as queries:
            assert tenant.client.get(path).status_code == 200
        selects = [q["sql"] for q in queries if q["sql"].startswith("SELECT") and 'FROM "llm_aitask"' in q["sql"]]
        assert selects, path
        return {column for column in ("prompt", "messages") if any(f'"llm_aitask"."{column}"' in s for s in selects)}

    assert columns_read("/api/v1/ai-tasks/?limit=100") == set()
    assert columns_read("/api/v1/ai-tasks/?status=pending") == set()
    assert columns_read(f"/api/v1/ai-tasks/{open_task}/") == {"prompt"}
