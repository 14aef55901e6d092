"""The usage ledger: settle exactly once, release, price snapshots, cache hits."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import pytest
from django.db import IntegrityError, connection, transaction

from billing import services as billing
from billing.models import Price, UsageEntry
from contracts.billing import TokenUsage
from tests.billing.helpers import ESTIMATE, frozen, reserve, settle
from users import services as users

ZERO = Decimal(0)
ACTUAL = Decimal("0.0011")  # 400 x $0.50/M + 600 x $1.50/M


def test_settle_charges_real_cost_and_frees_the_hold(org_id: UUID) -> None:
    reservation = reserve(org_id)
    entry = settle(reservation)
    assert (entry.task_id, entry.model, entry.input_tokens, entry.output_tokens) == (
        reservation.task_id,
        "fake-small",
        400,
        600,
    )
    assert (entry.cost_usd, entry.saved_usd, entry.cached) == (ACTUAL, ZERO, False)
    status = billing.budget_status(organization_id=org_id)
    assert (status.spent_usd, status.reserved_usd) == (ACTUAL, ZERO)


def test_settling_twice_charges_once(org_id: UUID) -> None:
    reservation = reserve(org_id)
    first = settle(reservation)
    second = settle(reservation, input_tokens=9999, output_tokens=9999)
    assert second == first
    assert UsageEntry.objects.filter(task_id=reservation.task_id).count() == 1
    assert billing.budget_status(organization_id=org_id).spent_usd == ACTUAL


def test_release_after_failure_restores_remaining(org_id: UUID) -> None:
    before = billing.budget_status(organization_id=org_id).remaining_usd
    reservation = reserve(org_id)
    assert billing.budget_status(organization_id=org_id).remaining_usd == before - ESTIMATE
    assert billing.reservation_release(reservation_id=reservation.id) is True
    assert billing.reservation_release(reservation_id=reservation.id) is False
    status = billing.budget_status(organization_id=org_id)
    assert (status.remaining_usd, status.reserved_usd, status.spent_usd) == (before, ZERO, ZERO)


def test_release_after_settle_does_nothing(org_id: UUID) -> None:
    reservation = reserve(org_id)
    settle(reservation)
    before = billing.budget_status(organization_id=org_id)
    assert billing.reservation_release(reservation_id=reservation.id) is False
    assert billing.budget_status(organization_id=org_id) == before


def test_release_of_an_unknown_reservation_is_false_and_settle_is_404(org_id: UUID) -> None:
    assert billing.reservation_release(reservation_id=uuid.uuid4()) is False
    with pytest.raises(billing.ReservationNotFound):
        billing.reservation_settle(reservation_id=uuid.uuid4(), usage=TokenUsage(input_tokens=1, output_tokens=1))


def test_settle_after_the_sweeper_released_still_charges_once(org_id: UUID) -> None:
    reservation = reserve(org_id)
    billing.reservation_release(reservation_id=reservation.id)
    entry = settle(reservation)
    assert entry.cost_usd == ACTUAL
    status = billing.budget_status(organization_id=org_id)
    assert (status.spent_usd, status.reserved_usd) == (ACTUAL, ZERO)  # the hold is not freed twice


def test_price_change_after_a_task_leaves_its_cost_unchanged(org_id: UUID) -> None:
    reservation = reserve(org_id)
    Price.objects.create(
        model="fake-small",
        provider="fake",
        input_usd_per_mtok=Decimal(50),
        output_usd_per_mtok=Decimal(150),
        valid_from=datetime.now(UTC).date(),
    )
    assert billing.price_current(model="fake-small").input_usd_per_mtok == Decimal(50)
    entry = settle(reservation)
    assert entry.cost_usd == ACTUAL
    assert (entry.input_usd_per_mtok, entry.output_usd_per_mtok) == (Decimal("0.5"), Decimal("1.5"))
    # A task reserved after the change pays the new price.
    assert reserve(org_id).amount_usd == ESTIMATE * 100


def test_cache_hit_records_zero_cost_and_what_it_saved(org_id: UUID) -> None:
    task_id = uuid.uuid4()
    entry = billing.usage_record_cache_hit(
        organization_id=org_id,
        api_key_id=None,
        task_id=task_id,
        model="fake-large",
        usage=TokenUsage(input_tokens=1000, output_tokens=1000),
    )
    assert (entry.cost_usd, entry.saved_usd, entry.cached) == (ZERO, Decimal("0.018"), True)
    again = billing.usage_record_cache_hit(
        organization_id=org_id,
        api_key_id=None,
        task_id=task_id,
        model="fake-large",
        usage=TokenUsage(input_tokens=1000, output_tokens=1000),
    )
    assert again == entry
    assert UsageEntry.objects.filter(task_id=task_id).count() == 1
    assert billing.budget_status(organization_id=org_id).spent_usd == 0


def test_negative_usage_is_refused(org_id: UUID) -> None:
    reservation = reserve(org_id)
    with pytest.raises(billing.InvalidBillingRequest):
        settle(reservation, input_tokens=-1)


def test_ledger_rows_cannot_be_updated_or_deleted(org_id: UUID) -> None:
    settle(reserve(org_id))
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        UsageEntry.objects.filter(organization_id=org_id).update(cost_usd=0)
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        UsageEntry.objects.filter(organization_id=org_id).delete()


def test_reservations_held_lists_old_held_ones_for_the_sweeper(org_id: UUID) -> None:
    now = datetime.now(UTC)
    with frozen(now - timedelta(hours=1)):
        old = reserve(org_id)
        old_settled = reserve(org_id)
    settle(old_settled)
    reserve(org_id)  # too recent
    held = billing.reservations_held(created_before=now - timedelta(minutes=5))
    assert [r.id for r in held if r.organization_id == org_id] == [old.id]
    assert billing.reservations_held(created_before=now, limit=1)[0].status == "held"


@pytest.mark.django_db(transaction=True)
def test_concurrent_settles_write_one_ledger_row(transactional_db: None) -> None:
    org_id = users.organization_get_or_create(name="Settling Org").id
    reservation = reserve(org_id)
    barrier = threading.Barrier(10)
    errors: list[Exception] = []

    def run() -> None:
        try:
            barrier.wait()
            settle(reservation)
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert UsageEntry.objects.filter(task_id=reservation.task_id).count() == 1
    status = billing.budget_status(organization_id=org_id)
    assert (status.spent_usd, status.reserved_usd) == (ACTUAL, ZERO)
