"""The summary: figures equal hand-computed ones, the second call runs no query, a
stampede runs one, a new event invalidates the organization's cached summaries."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from analytics import services
from tests.analytics.test_partitions import event

DAY0 = timezone.now().date() - timedelta(days=10)
DAY1, DAY2 = DAY0 + timedelta(days=1), DAY0 + timedelta(days=2)


def at(day: date, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, second), tzinfo=UTC)


def seed(org: uuid.UUID, other: uuid.UUID) -> None:
    """Five outcomes of ``org`` in the period, two just outside it, one of ``other``."""
    # organization, when, status, model, priority, input, output, cost, duration
    rows: list[tuple[uuid.UUID, datetime, str, str, str, int, int, str, float | None]] = [
        (org, at(DAY0, 10), "done", "fake-small", "normal", 100, 200, "0.0003", 1.0),
        (org, at(DAY0, 11), "done", "fake-small", "high", 50, 50, "0.0001", 2.0),
        (org, at(DAY0, 23, 59, 59), "failed", "fake-large", "normal", 0, 0, "0", 3.0),
        (org, at(DAY2), "done", "fake-large", "low", 1000, 500, "0.0105", 4.0),
        (org, at(DAY2, 5), "cancelled", "fake-small", "normal", 0, 0, "0", None),
        (org, at(DAY0) - timedelta(seconds=1), "done", "fake-small", "normal", 1, 1, "5", 1.0),  # before start
        (org, at(DAY2 + timedelta(days=1)), "done", "fake-small", "normal", 1, 1, "5", 1.0),  # after end
        (other, at(DAY0, 12), "done", "fake-small", "normal", 1, 1, "9", 1.0),
    ]
    for organization, moment, status, model, priority, tokens_in, tokens_out, cost, duration in rows:
        finished = event(
            organization,
            moment,
            status=status,
            model=model,
            priority=priority,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            cost_usd=Decimal(cost),
            duration_seconds=duration,
            error_code=None if status == "done" else "provider_error",
        )
        assert services.task_outcome_record(finished)


def figures(summary_part: Any) -> dict[str, Any]:
    data = summary_part.model_dump()
    data.pop("key", None)
    return data


@pytest.mark.django_db
def test_summary_figures_equal_hand_computed_ones() -> None:
    org, other = uuid.uuid4(), uuid.uuid4()
    seed(org, other)
    summary = services.summary_compute(organization_id=org, start=DAY0, end=DAY2)

    assert figures(summary.totals) == {
        "tasks": 5,
        "by_status": {"done": 3, "failed": 1, "cancelled": 1},
        "failure_rate": 0.2,
        "p50_duration_s": pytest.approx(2.5),  # durations 1, 2, 3, 4 (the cancelled task has none)
        "p95_duration_s": pytest.approx(3.85),  # 3 + 0.85 * (4 - 3)
        "input_tokens": 1150,
        "output_tokens": 750,
        "cost_usd": Decimal("0.0109"),
    }
    assert summary.by_model is not None and [g.key for g in summary.by_model] == ["fake-large", "fake-small"]
    large, small = summary.by_model
    assert (large.tasks, large.by_status["failed"], large.failure_rate, large.cost_usd) == (
        2,
        1,
        0.5,
        Decimal("0.0105"),
    )
    assert [large.p50_duration_s, large.p95_duration_s] == pytest.approx([3.5, 3.95])
    assert (small.tasks, small.by_status, small.failure_rate) == (3, {"done": 2, "failed": 0, "cancelled": 1}, 0.0)
    assert [small.p50_duration_s, small.p95_duration_s] == pytest.approx([1.5, 1.95])
    assert (small.input_tokens, small.output_tokens, small.cost_usd) == (150, 250, Decimal("0.0004"))

    assert summary.by_priority is not None
    by_priority = {g.key: g for g in summary.by_priority}
    assert sorted(by_priority) == ["high", "low", "normal"]
    normal = by_priority["normal"]
    assert normal.tasks == 3 and normal.failure_rate == pytest.approx(1 / 3)
    assert [normal.p50_duration_s, normal.p95_duration_s] == pytest.approx([2.0, 2.9])
    assert (by_priority["high"].tasks, by_priority["high"].p95_duration_s) == (1, 2.0)
    assert (by_priority["low"].cost_usd, by_priority["low"].p50_duration_s) == (Decimal("0.0105"), 4.0)

    assert summary.daily is not None
    assert [(p.day, p.tasks, p.cost_usd, p.cumulative_cost_usd) for p in summary.daily] == [
        (DAY0, 3, Decimal("0.0004"), Decimal("0.0004")),
        (DAY1, 0, Decimal(0), Decimal("0.0004")),  # a day without tasks is still in the series
        (DAY2, 2, Decimal("0.0105"), Decimal("0.0109")),
    ]
    assert summary.daily[0].p95_duration_s == pytest.approx(2.9)  # durations 1, 2, 3


@pytest.mark.django_db
def test_group_by_limits_the_breakdowns_and_an_empty_period_is_zero() -> None:
    org = uuid.uuid4()
    summary = services.summary_compute(organization_id=org, start=DAY0, end=DAY0, group_by=["model"])
    assert summary.by_model == [] and summary.by_priority is None and summary.daily is None
    assert summary.totals.tasks == 0 and summary.totals.p50_duration_s is None and summary.totals.cost_usd == 0


@pytest.mark.django_db
def test_second_summary_call_runs_no_query(django_assert_num_queries: Callable[..., Any]) -> None:
    org, other = uuid.uuid4(), uuid.uuid4()
    seed(org, other)
    first = services.analytics_summary(organization_id=org, start=DAY0, end=DAY2)
    with django_assert_num_queries(0):
        second = services.analytics_summary(organization_id=org, start=DAY0, end=DAY2)
    assert second == first


@pytest.mark.django_db
def test_a_new_event_invalidates_the_organizations_cached_summary(
    django_capture_on_commit_callbacks: Callable[..., Any],
) -> None:
    org, other = uuid.uuid4(), uuid.uuid4()
    before = services.analytics_summary(organization_id=org, start=DAY0, end=DAY2)
    theirs = services.analytics_summary(organization_id=other, start=DAY0, end=DAY2)
    with django_capture_on_commit_callbacks(execute=True):
        services.task_outcome_record(event(org, at(DAY1, 9), cost_usd=Decimal("0.25")))
    after = services.analytics_summary(organization_id=org, start=DAY0, end=DAY2)
    assert (before.totals.tasks, after.totals.tasks) == (0, 1)
    assert after.totals.cost_usd == Decimal("0.25")
    with CaptureQueriesContext(connection) as queries:  # the other organization's entry is still cached
        assert services.analytics_summary(organization_id=other, start=DAY0, end=DAY2) == theirs
    assert len(queries) == 0


@pytest.mark.django_db(transaction=True)
def test_a_stampede_on_a_cold_summary_runs_one_query() -> None:
    org = uuid.uuid4()
    services.task_outcome_record(event(org, at(DAY1, 9)))
    threads, results, summary_queries = 8, [], []
    barrier = threading.Barrier(threads)

    def count(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        if "percentile_cont" in sql:
            summary_queries.append(sql)
        return execute(sql, params, many, context)

    def call() -> None:
        try:
            with connection.execute_wrapper(count):
                barrier.wait()
                results.append(services.analytics_summary(organization_id=org, start=DAY0, end=DAY2))
        finally:
            connection.close()

    pool = [threading.Thread(target=call) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=30)
    assert len(results) == threads and all(result == results[0] for result in results)
    assert results[0].totals.tasks == 1
    assert len(summary_queries) == 1


@pytest.mark.django_db
def test_summary_api_is_scoped_validated_and_cached(tenant: Any, make_tenant: Callable[..., Any]) -> None:
    org = uuid.UUID(tenant.organization_id)
    seed(org, uuid.UUID(make_tenant().organization_id))
    url = f"/api/v1/analytics/summary/?start={DAY0}&end={DAY2}"
    with CaptureQueriesContext(connection) as first:
        response = tenant.client.get(url)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["totals"]["tasks"] == 5 and body["totals"]["cost_usd"] == "0.0109000000"
    assert [day["day"] for day in body["daily"]] == [str(DAY0), str(DAY1), str(DAY2)]
    with CaptureQueriesContext(connection) as second:
        assert tenant.client.get(url).json() == body
    assert any("percentile_cont" in q["sql"] for q in first.captured_queries)
    assert not any("analytics_taskoutcome" in q["sql"] for q in second.captured_queries)

    only_model = tenant.client.get(f"{url}&group_by=model").json()
    assert only_model["daily"] is None and [g["key"] for g in only_model["by_model"]] == ["fake-large", "fake-small"]
    other = make_tenant().client.get(url).json()
    assert other["totals"]["tasks"] == 0
    assert tenant.client.get("/api/v1/analytics/summary/").status_code == 200  # the last 30 days


@pytest.mark.django_db
@pytest.mark.parametrize(
    "query",
    [
        "group_by=model,colour",
        "start=2026-13-01",
        "start=2026-11-10&end=2026-11-01",
        "start=2024-01-01&end=2026-01-01",
        "start=yesterday",
    ],
)
def test_summary_api_rejects_bad_queries(tenant: Any, query: str) -> None:
    response = tenant.client.get(f"/api/v1/analytics/summary/?{query}")
    assert response.status_code == 400
    assert response.json()["type"]


@pytest.mark.django_db
def test_summary_api_needs_a_key(anon_client: Any) -> None:
    assert anon_client.get("/api/v1/analytics/summary/").status_code == 401


@pytest.mark.django_db
def test_summary_api_query_count_does_not_grow_with_rows(tenant: Any) -> None:
    org = uuid.UUID(tenant.organization_id)
    tenant.client.get("/api/v1/analytics/summary/")  # the key's first use of the minute writes last_used_at
    counts = []
    for extra in (1, 40):
        for i in range(extra):
            services.task_outcome_record(event(org, at(DAY1, 8) + timedelta(seconds=i)))
        url = f"/api/v1/analytics/summary/?start={DAY0}&end={DAY2}&group_by=model,priority,day&n={extra}"
        services.summary_invalidate(organization_id=org)  # a cold cache both times
        with CaptureQueriesContext(connection) as queries:
            assert tenant.client.get(url).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]
    assert counts[0] <= 4  # the view's query budget


@pytest.mark.django_db
def test_summary_still_answers_when_redis_is_down(settings: Any) -> None:
    org = uuid.uuid4()
    services.task_outcome_record(event(org, at(DAY1, 9)))
    settings.CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens there
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
        }
    }
    summary = services.analytics_summary(organization_id=org, start=DAY0, end=DAY2)
    assert summary.totals.tasks == 1
    services.summary_invalidate(organization_id=org)  # logs, does not raise
