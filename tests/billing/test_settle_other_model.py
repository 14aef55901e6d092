"""A fallback model answered: the task is charged at that model's price, booked under it."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import pytest

from billing import services as billing
from contracts.billing import TokenUsage
from tests.billing.helpers import reserve


def test_settle_at_the_price_of_the_model_that_answered(org_id: UUID) -> None:
    reservation = reserve(org_id, model="fake-small")
    entry = billing.reservation_settle(
        reservation_id=reservation.id, usage=TokenUsage(input_tokens=400, output_tokens=600), model="fake-large"
    )
    # fake-large: $3 in / $15 out per million tokens.
    assert (entry.model, entry.cost_usd) == ("fake-large", Decimal("0.0102"))
    assert (entry.input_usd_per_mtok, entry.output_usd_per_mtok) == (Decimal(3), Decimal(15))
    status = billing.budget_status(organization_id=org_id)
    assert (status.spent_usd, status.reserved_usd) == (Decimal("0.0102"), Decimal(0))


def test_settle_with_the_reserved_model_is_the_snapshot(org_id: UUID) -> None:
    reservation = reserve(org_id, model="fake-small")
    entry = billing.reservation_settle(
        reservation_id=reservation.id, usage=TokenUsage(input_tokens=400, output_tokens=600), model="fake-small"
    )
    assert (entry.model, entry.cost_usd) == ("fake-small", Decimal("0.0011"))


def test_settle_at_an_unknown_model_is_refused_and_charges_nothing(org_id: UUID) -> None:
    reservation = reserve(org_id)
    with pytest.raises(billing.UnknownModel):
        billing.reservation_settle(
            reservation_id=reservation.id, usage=TokenUsage(input_tokens=1, output_tokens=1), model="nope"
        )
    assert billing.budget_status(organization_id=org_id).spent_usd == 0


def test_the_hold_covers_the_dearest_fallback_so_the_budget_never_overshoots(org_id: UUID) -> None:
    """A task that may be answered by fake-large holds fake-large's price of its estimate
    (the unit prices snapshotted stay the primary model's): a fallback's answer at the
    estimate is always covered, and a budget that fits fake-small only refuses it."""
    small = reserve(org_id, model="fake-small", input_tokens=400, output_tokens=600)
    assert small.amount_usd == Decimal("0.0011")  # the same without fallbacks as before
    chained = reserve(org_id, model="fake-small", input_tokens=400, output_tokens=600, fallback_models=["fake-large"])
    assert chained.amount_usd == Decimal("0.0102")  # 400 x $3/M + 600 x $15/M
    assert (chained.input_usd_per_mtok, chained.output_usd_per_mtok) == (
        small.input_usd_per_mtok,
        small.output_usd_per_mtok,
    )
    billing.reservation_release(reservation_id=small.id)
    billing.budget_set(organization_id=org_id, limit_usd=Decimal("0.0102") + Decimal("0.0050"))
    with pytest.raises(billing.BudgetExceeded):  # 0.0102 held already + 0.0102 > 0.0152
        reserve(org_id, model="fake-small", input_tokens=400, output_tokens=600, fallback_models=["fake-large"])
    reserve(org_id, model="fake-small", input_tokens=400, output_tokens=600)  # 0.0011 fits
    entry = billing.reservation_settle(
        reservation_id=chained.id, usage=TokenUsage(input_tokens=400, output_tokens=600), model="fake-large"
    )
    status = billing.budget_status(organization_id=org_id)
    assert entry.cost_usd == Decimal("0.0102")
    assert status.spent_usd + status.reserved_usd <= status.limit_usd


def test_an_unknown_fallback_is_refused_before_anything_is_held(org_id: UUID) -> None:
    with pytest.raises(billing.UnknownModel):
        reserve(org_id, fallback_models=["gpt-17-ultra"])
    assert billing.budget_status(organization_id=org_id).reserved_usd == Decimal(0)
