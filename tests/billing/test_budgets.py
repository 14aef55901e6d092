"""Budgets and reservations: limits, lazy monthly rows, per-key limits, concurrency."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import pytest
from django.db import connection

from billing import services as billing
from billing.models import Budget, Reservation
from tests.billing.helpers import ESTIMATE, frozen, reserve, settle
from users import services as users


def test_new_organization_starts_with_the_default_budget_lazily(org_id: UUID, settings) -> None:
    settings.DEFAULT_MONTHLY_BUDGET_USD = "42.50"
    status = billing.budget_status(organization_id=org_id)
    assert status.limit_usd == Decimal("42.5")
    assert status.spent_usd == status.reserved_usd == 0
    assert status.remaining_usd == Decimal("42.5")
    assert not Budget.objects.filter(organization_id=org_id).exists()  # a read creates nothing

    reserve(org_id)
    row = Budget.objects.get(organization_id=org_id)
    assert (row.limit_usd, row.reserved_usd, row.api_key_id) == (Decimal("42.5"), ESTIMATE, None)


def test_reservation_holds_the_estimate_and_snapshots_unit_prices(org_id: UUID) -> None:
    reservation = reserve(org_id, model="fake-large", input_tokens=2000, output_tokens=500)
    # 2000 x $3/M + 500 x $15/M
    assert reservation.amount_usd == Decimal("0.0135")
    assert (reservation.input_usd_per_mtok, reservation.output_usd_per_mtok) == (Decimal(3), Decimal(15))
    assert reservation.status == "held"
    status = billing.budget_status(organization_id=org_id)
    assert status.reserved_usd == Decimal("0.0135")
    assert status.remaining_usd == Decimal(100) - Decimal("0.0135")
    assert status.period == datetime.now(UTC).strftime("%Y-%m")


def test_over_budget_raises_with_remaining_and_required(org_id: UUID) -> None:
    billing.budget_set(organization_id=org_id, limit_usd=Decimal("0.003"))
    reserve(org_id)
    with pytest.raises(billing.BudgetExceeded) as caught:
        reserve(org_id)
    error = caught.value
    assert (error.status_code, error.code) == (402, "budget_exhausted")
    assert error.extra == {"remaining_usd": "0.0010000000", "required_usd": "0.0020000000"}
    assert Reservation.objects.filter(organization_id=org_id).count() == 1
    assert billing.budget_status(organization_id=org_id).reserved_usd == ESTIMATE


def test_zero_budget_blocks_reservations(org_id: UUID) -> None:
    billing.budget_set(organization_id=org_id, limit_usd=Decimal(0))
    with pytest.raises(billing.BudgetExceeded):
        reserve(org_id, input_tokens=1, output_tokens=1)


def test_unknown_model_is_refused_before_anything_is_held(org_id: UUID) -> None:
    with pytest.raises(billing.UnknownModel) as caught:
        reserve(org_id, model="gpt-17-ultra")
    assert (caught.value.status_code, caught.value.code) == (400, "unknown_model")
    assert not Budget.objects.filter(organization_id=org_id).exists()


def test_reserving_again_for_a_task_returns_its_held_reservation(org_id: UUID) -> None:
    task_id = uuid.uuid4()
    first = reserve(org_id, task_id=task_id)
    again = reserve(org_id, task_id=task_id)
    assert again.id == first.id
    assert billing.budget_status(organization_id=org_id).reserved_usd == ESTIMATE


def test_a_failed_task_can_reserve_again_after_release(org_id: UUID) -> None:
    task_id = uuid.uuid4()
    first = reserve(org_id, task_id=task_id)
    assert billing.reservation_release(reservation_id=first.id)
    second = reserve(org_id, task_id=task_id)
    assert second.id != first.id
    assert billing.budget_status(organization_id=org_id).reserved_usd == ESTIMATE


def test_per_key_budget_limits_that_key_only(make_tenant) -> None:
    tenant = make_tenant()
    org_id = UUID(tenant.organization_id)
    limited = UUID(tenant.api_key_id)
    other = users.api_key_create(email=tenant.issued.user_email, organization_name=tenant.issued.organization_name)
    billing.budget_set(organization_id=org_id, api_key_id=limited, limit_usd=Decimal("0.004"))

    reserve(org_id, api_key_id=limited)
    reserve(org_id, api_key_id=limited)
    with pytest.raises(billing.BudgetExceeded) as caught:
        reserve(org_id, api_key_id=limited)
    assert caught.value.extra["remaining_usd"] == "0.0000000000"
    reserve(org_id, api_key_id=other.info.id)  # the organization's budget still has room

    key_status = billing.budget_status(organization_id=org_id, api_key_id=limited)
    org_status = billing.budget_status(organization_id=org_id)
    assert (key_status.limit_usd, key_status.reserved_usd) == (Decimal("0.004"), Decimal("0.004"))
    assert org_status.reserved_usd == Decimal("0.006")  # every key's holds count against the organization
    # A key without a budget of its own reports the organization's.
    assert billing.budget_status(organization_id=org_id, api_key_id=other.info.id) == org_status


def test_organization_budget_applies_to_keys_with_their_own_budget(make_tenant) -> None:
    tenant = make_tenant()
    org_id, key_id = UUID(tenant.organization_id), UUID(tenant.api_key_id)
    billing.budget_set(organization_id=org_id, limit_usd=Decimal("0.002"))
    billing.budget_set(organization_id=org_id, api_key_id=key_id, limit_usd=Decimal(50))
    reserve(org_id, api_key_id=key_id)
    with pytest.raises(billing.BudgetExceeded):
        reserve(org_id, api_key_id=key_id)
    # The failed attempt held nothing on the key either (one transaction).
    assert billing.budget_status(organization_id=org_id, api_key_id=key_id).reserved_usd == ESTIMATE


def test_a_new_month_carries_the_limit_and_starts_from_zero(org_id: UUID) -> None:
    with frozen(datetime(2026, 1, 31, 23, 59, tzinfo=UTC)):
        billing.budget_set(organization_id=org_id, limit_usd=Decimal(7))
        january = reserve(org_id)
    with frozen(datetime(2026, 2, 1, 0, 1, tzinfo=UTC)):
        status = billing.budget_status(organization_id=org_id)
        assert (status.period, status.limit_usd, status.reserved_usd) == ("2026-02", Decimal(7), Decimal(0))
        reserve(org_id)
        settle(january)  # settles against January, the period it was reserved in
        february = billing.budget_status(organization_id=org_id)
    assert (february.spent_usd, february.reserved_usd) == (Decimal(0), ESTIMATE)
    rows = {row.period.month: row for row in Budget.objects.filter(organization_id=org_id)}
    assert rows[1].spent_usd == Decimal("0.0011")  # 400 x 0.5/M + 600 x 1.5/M
    assert rows[1].reserved_usd == 0
    assert rows[2].limit_usd == Decimal(7)


def test_budget_set_rejects_negative_and_absurd_limits(org_id: UUID) -> None:
    for bad in (Decimal(-1), Decimal("NaN"), Decimal("1e12")):
        with pytest.raises(billing.InvalidBillingRequest):
            billing.budget_set(organization_id=org_id, limit_usd=bad)


def _race(count: int, target: Callable[[], object]) -> list[object]:
    """Run ``target`` in ``count`` threads released together; each thread has its own
    database connection and closes it. Returns each call's result or exception."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(index: int) -> None:
        try:
            barrier.wait()
            results[index] = target()
        except Exception as exc:
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)
def test_reservation_never_exceeds_limit_under_concurrency(transactional_db: None) -> None:
    org_id = users.organization_get_or_create(name="Racing Org").id
    limit = ESTIMATE * 10
    billing.budget_set(organization_id=org_id, limit_usd=limit)

    results = _race(50, lambda: reserve(org_id))

    succeeded = [r for r in results if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, billing.BudgetExceeded)]
    assert (len(succeeded), len(refused)) == (10, 40), results
    status = billing.budget_status(organization_id=org_id)
    assert status.spent_usd + status.reserved_usd == limit
    assert status.remaining_usd == 0
    assert Reservation.objects.filter(organization_id=org_id, status="held").count() == 10


@pytest.mark.django_db(transaction=True)
def test_per_key_limit_holds_under_concurrency(transactional_db: None) -> None:
    issued = users.api_key_create(email="racer@keys.test", organization_name="Racing Keys")
    org_id, key_id = issued.info.organization_id, issued.info.id
    billing.budget_set(organization_id=org_id, api_key_id=key_id, limit_usd=ESTIMATE * 5)

    results = _race(30, lambda: reserve(org_id, api_key_id=key_id))

    assert sum(not isinstance(r, Exception) for r in results) == 5
    assert all(isinstance(r, billing.BudgetExceeded) for r in results if isinstance(r, Exception))
    assert billing.budget_status(organization_id=org_id, api_key_id=key_id).reserved_usd == ESTIMATE * 5
    assert billing.budget_status(organization_id=org_id).reserved_usd == ESTIMATE * 5
