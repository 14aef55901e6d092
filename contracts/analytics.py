"""Analytics contracts."""

from __future__ import annotations

from decimal import Decimal

from contracts.base import Contract


class OutcomeTotals(Contract):
    """Finished tasks of one organization in a period, by status."""

    by_status: dict[str, int]
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
