"""Money and budget-period arithmetic for billing. Pure functions: no ORM, no I/O.

The clock is Django's ``timezone.now`` (always UTC here, ``USE_TZ``), so one patch moves
every date billing computes.

Amounts are ``Decimal`` USD with 10 decimal places, the precision of every money column,
so what is computed here is exactly what is stored.
"""

from __future__ import annotations

from datetime import UTC, date
from decimal import ROUND_HALF_UP, Decimal

from django.utils import timezone

PLACES = Decimal("1e-10")
PER_MTOK = Decimal(1_000_000)
ZERO = Decimal(0).quantize(PLACES)


def quantize(amount: Decimal) -> Decimal:
    return amount.quantize(PLACES, rounding=ROUND_HALF_UP)


def cost_of(
    *, input_tokens: int, output_tokens: int, input_usd_per_mtok: Decimal, output_usd_per_mtok: Decimal
) -> Decimal:
    """Tokens times unit prices (USD per million tokens), rounded to the stored precision."""
    return quantize((input_tokens * input_usd_per_mtok + output_tokens * output_usd_per_mtok) / PER_MTOK)


def as_string(amount: Decimal) -> str:
    """A decimal string with the stored precision and never an exponent (``str(Decimal)``
    would print ``0E-10``)."""
    return format(quantize(amount), "f")


def today_utc() -> date:
    return timezone.now().astimezone(UTC).date()


def period_of(day: date) -> date:
    """The budget period (first day of the UTC calendar month) that ``day`` falls in."""
    return day.replace(day=1)


def current_period() -> date:
    return period_of(today_utc())


def period_label(period: date) -> str:
    return f"{period:%Y-%m}"
