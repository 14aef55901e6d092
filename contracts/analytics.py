"""Analytics contracts."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from contracts.base import Contract


class OutcomeTotals(Contract):
    """Finished tasks of one organization in a period, by status."""

    by_status: dict[str, int]
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


class PartitionInfo(Contract):
    """One partition of the outcomes table (``month`` is None for a foreign name)."""

    name: str
    month: date | None
    bound: str


class PartitionReport(Contract):
    created: list[str]
    dropped: list[str]


class SummaryFigures(Contract):
    """Finished tasks of one slice of a period: counts, failure rate, duration
    percentiles (seconds, None without durations), tokens and cost."""

    tasks: int
    by_status: dict[str, int]
    failure_rate: float
    p50_duration_s: float | None
    p95_duration_s: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal


class SummaryGroup(SummaryFigures):
    key: str


class DailyPoint(SummaryFigures):
    day: date
    cumulative_cost_usd: Decimal


SummaryDimension = Literal["model", "priority", "day"]


class Summary(Contract):
    """One organization's outcomes from ``start`` to ``end`` (UTC days, inclusive)."""

    start: date
    end: date
    totals: SummaryFigures
    by_model: list[SummaryGroup] | None
    by_priority: list[SummaryGroup] | None
    daily: list[DailyPoint] | None


class ExportInfo(Contract):
    id: UUID
    organization_id: UUID
    start: datetime
    end: datetime
    status: Literal["pending", "running", "done", "failed"]
    row_count: int
    error: str
    created_at: datetime
    finished_at: datetime | None
