"""The price catalog: seeded models, history by valid_from, unknown models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing import services as billing
from billing.models import Price

pytestmark = pytest.mark.django_db


def test_fake_models_are_seeded_at_the_spec_prices() -> None:
    small = billing.price_current(model="fake-small")
    large = billing.price_current(model="fake-large")
    assert (small.provider, small.input_usd_per_mtok, small.output_usd_per_mtok) == (
        "fake",
        Decimal("0.5"),
        Decimal("1.5"),
    )
    assert (large.input_usd_per_mtok, large.output_usd_per_mtok) == (Decimal(3), Decimal(15))


def test_real_provider_models_are_seeded() -> None:
    providers = {price.provider for price in billing.price_list()}
    assert {"fake", "anthropic", "openai"} <= providers


def test_unknown_model_raises() -> None:
    with pytest.raises(billing.UnknownModel) as caught:
        billing.price_current(model="no-such-model")
    assert caught.value.status_code == 400
    assert caught.value.extra == {"model": "no-such-model"}


def test_a_new_price_applies_from_its_date_and_history_is_kept() -> None:
    today = datetime.now(UTC).date()
    Price.objects.create(
        model="fake-small", provider="fake", input_usd_per_mtok=1, output_usd_per_mtok=2, valid_from=today
    )
    Price.objects.create(
        model="fake-small",
        provider="fake",
        input_usd_per_mtok=9,
        output_usd_per_mtok=9,
        valid_from=today + timedelta(days=3),
    )
    assert billing.price_current(model="fake-small").input_usd_per_mtok == 1
    assert billing.price_current(model="fake-small", on=today - timedelta(days=1)).input_usd_per_mtok == Decimal("0.5")
    assert billing.price_current(model="fake-small", on=today + timedelta(days=3)).input_usd_per_mtok == 9
    current = [p for p in billing.price_list() if p.model == "fake-small"]
    assert [p.input_usd_per_mtok for p in current] == [1]
    assert len(billing.price_list()) == len({p.model for p in billing.price_list()})


def test_estimate_cost_uses_the_current_price() -> None:
    assert billing.estimate_cost(model="fake-large", input_tokens=1_000_000, output_tokens=2) == Decimal("3.00003")
