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
