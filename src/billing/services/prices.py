"""The price catalog: what a model costs today, or on a given day."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from billing import money, selectors
from billing.catalog import DEFAULT_PRICES, VALID_FROM
from billing.models import Price as PriceModel
from billing.services._common import price_row, to_price
from contracts.billing import Price


def price_current(*, model: str, on: date | None = None) -> Price:
    """The price of ``model`` in force on ``on`` (today, UTC, by default)."""
    return to_price(price_row(model, on))


def price_list() -> list[Price]:
    """The current price of every model in the catalog, by model name."""
    return [to_price(row) for row in selectors.prices_in_force(on=money.today_utc())]


def estimate_cost(*, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    row = price_row(model)
    return money.cost_of(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        input_usd_per_mtok=row.input_usd_per_mtok,
        output_usd_per_mtok=row.output_usd_per_mtok,
    )


def price_catalog_seed() -> int:
    """Insert whatever rows of the launch catalog (``billing.catalog``) are missing and
    return how many. Migration 0002 seeds a fresh database; this restores the catalog
    after a test database flush (``transactional_db`` truncates every table)."""
    existing = set(PriceModel.objects.filter(valid_from=VALID_FROM).values_list("model", flat=True))
    missing = [
        PriceModel(
            model=row.model,
            provider=row.provider,
            input_usd_per_mtok=Decimal(row.input_usd_per_mtok),
            output_usd_per_mtok=Decimal(row.output_usd_per_mtok),
            valid_from=VALID_FROM,
        )
        for row in DEFAULT_PRICES
        if row.model not in existing
    ]
    PriceModel.objects.bulk_create(missing, ignore_conflicts=True)
    return len(missing)
