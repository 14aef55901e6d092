"""Billing contracts: prices, budgets, reservations, the usage ledger and reports.

Money is ``Decimal`` end to end (USD); no float ever carries an amount.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from contracts.base import Contract


class Price(Contract):
    """Unit prices of one model, valid from a date until the next price of that model."""

    model: str
    provider: str
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    valid_from: date


class TokenUsage(Contract):
    input_tokens: int
    output_tokens: int


class ReservationRequest(Contract):
    """What the llm context asks billing to hold before a task is queued."""

    organization_id: UUID
    api_key_id: UUID | None
    task_id: UUID
    model: str
    estimated_input_tokens: int
    max_output_tokens: int
    # Models that may answer instead (fallbacks): the hold covers the dearest of them all,
    # since the task is charged at the price of the model that answered.
    fallback_models: list[str] = []


class Reservation(Contract):
    id: UUID
    organization_id: UUID
    api_key_id: UUID | None
    task_id: UUID
    model: str
    amount_usd: Decimal
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    status: Literal["held", "settled", "released"]
    created_at: datetime


class UsageEntry(Contract):
    """One append-only ledger row; unique per task, so a task is charged at most once."""

    id: int
    organization_id: UUID
    api_key_id: UUID | None
    task_id: UUID
    model: str
    input_tokens: int
    output_tokens: int
    input_usd_per_mtok: Decimal
    output_usd_per_mtok: Decimal
    cost_usd: Decimal
    saved_usd: Decimal
    cached: bool
    created_at: datetime


class BudgetStatus(Contract):
    period: str  # "YYYY-MM"
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    remaining_usd: Decimal


class UsageRow(Contract):
    period: date | None = None
    model: str | None = None
    tasks: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


class CostReportRow(Contract):
    organization_id: UUID
    organization_name: str
    model: str
    tasks: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
