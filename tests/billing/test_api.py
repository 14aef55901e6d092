"""GET /api/v1/billing/budget/ and /usage/: shapes, validation, scoping, query budgets."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from django.db.models import Count, Sum

from billing import services as billing
from billing.models import UsageEntry
from contracts.billing import TokenUsage
from contracts.billing import UsageEntry as UsageEntryContract
from kernel.errors import exception_handler
from tests.conftest import Tenant

pytestmark = pytest.mark.django_db

Charge = Callable[..., UsageEntryContract]
TODAY = datetime.now(UTC).date()


def _at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def _usage(tenant: Tenant, **params: str) -> Any:
    return tenant.client.get("/api/v1/billing/usage/", params)


def test_budget_endpoint_shape(tenant, charge: Charge) -> None:
    org_id = UUID(tenant.organization_id)
    billing.budget_set(organization_id=org_id, limit_usd=Decimal(25))
    charge(org_id)
    response = tenant.client.get("/api/v1/billing/budget/")
    assert response.status_code == 200
    assert response.json() == {
        "period": TODAY.strftime("%Y-%m"),
        "limit_usd": "25.0000000000",
        "spent_usd": "0.0011000000",
        "reserved_usd": "0.0000000000",
        "remaining_usd": "24.9989000000",
    }


def test_budget_endpoint_needs_a_key(anon_client) -> None:
    assert anon_client.get("/api/v1/billing/budget/").status_code == 401


def test_budget_exceeded_maps_to_402_with_the_remaining_amount() -> None:
    error = billing.BudgetExceeded("No budget left.", remaining_usd="0.0010000000", required_usd="0.0020000000")
    response = exception_handler(error, {})
    assert response is not None
    assert response.status_code == 402
    assert response.data == {
        "type": "client_error",
        "code": "budget_exhausted",
        "detail": "No budget left.",
        "remaining_usd": "0.0010000000",
        "required_usd": "0.0020000000",
    }


@pytest.mark.parametrize("group_by", ["day", "model"])
def test_usage_report_totals_equal_the_ledger(tenant, make_tenant, charge: Charge, group_by: str) -> None:
    org_id = UUID(tenant.organization_id)
    days = [TODAY - timedelta(days=n) for n in (0, 1, 1, 3, 10)]
    for n, day in enumerate(days):
        charge(org_id, at=_at(day, hour=n), model="fake-large" if n % 2 else "fake-small", output_tokens=100 * n)
    billing.usage_record_cache_hit(
        organization_id=org_id,
        api_key_id=None,
        task_id=UUID(int=7),
        model="fake-small",
        usage=TokenUsage(input_tokens=5, output_tokens=5),
    )
    other = make_tenant()
    charge(UUID(other.organization_id), at=_at(TODAY), model="fake-small")

    response = _usage(tenant, start=str(TODAY - timedelta(days=30)), end=str(TODAY), group_by=group_by)
    assert response.status_code == 200
    rows = response.json()["results"]

    ledger = UsageEntry.objects.filter(organization_id=org_id)
    expected = ledger.aggregate(
        tasks=Count("id"), input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens"), cost=Sum("cost_usd")
    )
    assert sum(r["tasks"] for r in rows) == expected["tasks"] == 6
    assert sum(r["input_tokens"] for r in rows) == expected["input_tokens"]
    assert sum(r["output_tokens"] for r in rows) == expected["output_tokens"]
    assert sum(Decimal(r["cost_usd"]) for r in rows) == expected["cost"]
    key = "period" if group_by == "day" else "model"
    assert all(set(r) == {key, "tasks", "input_tokens", "output_tokens", "cost_usd"} for r in rows)
    if group_by == "day":
        assert [r["period"] for r in rows] == sorted({str(d) for d in days})
        assert next(r for r in rows if r["period"] == str(TODAY - timedelta(days=1)))["tasks"] == 2
    else:
        assert [r["model"] for r in rows] == ["fake-large", "fake-small"]
        for row in rows:
            per_model = ledger.filter(model=row["model"]).aggregate(cost=Sum("cost_usd"))["cost"]
            assert Decimal(row["cost_usd"]) == per_model


def test_usage_report_covers_whole_utc_days_inclusive(tenant, charge: Charge) -> None:
    org_id = UUID(tenant.organization_id)
    start, end = TODAY - timedelta(days=5), TODAY - timedelta(days=3)
    charge(org_id, at=datetime(start.year, start.month, start.day, 0, 0, tzinfo=UTC))
    charge(org_id, at=datetime(end.year, end.month, end.day, 23, 59, 59, tzinfo=UTC))
    charge(org_id, at=_at(start - timedelta(days=1), hour=23))
    charge(org_id, at=_at(end + timedelta(days=1), hour=0))
    rows = _usage(tenant, start=str(start), end=str(end)).json()["results"]
    assert [(r["period"], r["tasks"]) for r in rows] == [(str(start), 1), (str(end), 1)]


def test_another_organizations_usage_never_appears(tenant, make_tenant, charge: Charge) -> None:
    other = make_tenant()
    charge(UUID(other.organization_id))
    for group_by in ("day", "model"):
        response = _usage(tenant, start=str(TODAY), end=str(TODAY), group_by=group_by)
        assert response.json() == {"results": []}
    assert tenant.client.get("/api/v1/billing/budget/").json()["spent_usd"] == "0.0000000000"


@pytest.mark.parametrize(
    ("params", "attr"),
    [
        ({"end": "2026-01-31"}, "start"),
        ({"start": "2026-01-01"}, "end"),
        ({"start": "2026-02-30", "end": "2026-03-01"}, "start"),
        ({"start": "01/02/2026", "end": "2026-03-01"}, "start"),
        ({"start": "2026-03-02", "end": "2026-03-01"}, "end"),
        ({"start": "2025-01-01", "end": "2026-01-02"}, "end"),
        ({"start": "2026-01-01", "end": "2026-01-31", "group_by": "week"}, "group_by"),
    ],
)
def test_bad_usage_queries_are_400_in_the_standard_format(tenant, params: dict[str, str], attr: str) -> None:
    response = _usage(tenant, **params)
    assert response.status_code == 400
    body = response.json()
    assert (body["type"], body["code"]) == ("validation_error", "invalid")
    assert attr in {error["attr"] for error in body["errors"]}


def test_a_leap_year_of_usage_is_allowed(tenant) -> None:
    assert _usage(tenant, start="2024-01-01", end="2024-12-31").status_code == 200


@pytest.mark.parametrize("rows", [1, 30])
def test_usage_query_count_does_not_grow_with_rows(
    tenant, charge: Charge, django_assert_num_queries, rows: int
) -> None:
    org_id = UUID(tenant.organization_id)
    for n in range(rows):
        charge(org_id, at=_at(TODAY - timedelta(days=n)), model=("fake-small", "fake-large")[n % 2])
    tenant.client.get("/api/v1/me/")  # authentication records last use once a minute; take that write out
    for group_by in ("day", "model"):
        with django_assert_num_queries(2):  # the API key, then one GROUP BY
            response = _usage(tenant, start=str(TODAY - timedelta(days=40)), end=str(TODAY), group_by=group_by)
        assert sum(r["tasks"] for r in response.json()["results"]) == rows


@pytest.mark.parametrize("rows", [1, 30])
def test_budget_query_count_does_not_grow_with_rows(
    tenant, charge: Charge, django_assert_num_queries, rows: int
) -> None:
    org_id = UUID(tenant.organization_id)
    for _ in range(rows):
        charge(org_id)
    tenant.client.get("/api/v1/me/")
    with django_assert_num_queries(2):  # the API key, then the budget row
        response = tenant.client.get("/api/v1/billing/budget/")
    assert Decimal(response.json()["spent_usd"]) == Decimal("0.0011") * rows
