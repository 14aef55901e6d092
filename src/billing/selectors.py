"""Billing reads: querysets stay inside the context and every aggregation runs in SQL.

Selectors return model instances or plain rows to ``billing.services``, which maps them
to contracts. Nothing here writes.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from uuid import UUID

from django.db.models import Count, DateField, F, Sum
from django.db.models.functions import TruncDay

from billing.models import Budget, Price, Reservation, UsageEntry


def _utc_range(start: date, end: date) -> tuple[datetime, datetime]:
    """``[start 00:00 UTC, end + 1 day 00:00 UTC)``: the inclusive day range as instants."""
    return datetime.combine(start, time.min, tzinfo=UTC), datetime.combine(
        end + timedelta(days=1), time.min, tzinfo=UTC
    )


# -- prices -----------------------------------------------------------------------------


# The submit path's reads are written out in SQL: building and compiling the same
# querysets cost a submit more CPU than PostgreSQL took to answer them (issue 9's
# profile, docs/decisions/submit-path.md). ``raw`` still returns model instances.
_PRICE_IN_FORCE = (
    f"SELECT * FROM {Price._meta.db_table} WHERE model = %s AND valid_from <= %s "  # noqa: S608
    "ORDER BY valid_from DESC LIMIT 1"
)
_BUDGETS_LATEST = (
    f"SELECT DISTINCT ON (api_key_id) * FROM {Budget._meta.db_table} "  # noqa: S608
    "WHERE organization_id = %s AND (api_key_id IS NULL OR api_key_id = %s) ORDER BY api_key_id, period DESC"
)


def price_find(*, model: str, on: date) -> Price | None:
    """The row in force for ``model`` on ``on`` (the newest with ``valid_from <= on``)."""
    return next(iter(Price.objects.raw(_PRICE_IN_FORCE, [model, on])), None)


def prices_in_force(*, on: date) -> list[Price]:
    """One row per model: the price in force on ``on``, in one DISTINCT ON query."""
    return list(Price.objects.filter(valid_from__lte=on).order_by("model", "-valid_from").distinct("model"))


# -- budgets ----------------------------------------------------------------------------


def budgets_latest(*, organization_id: UUID, api_key_id: UUID | None) -> dict[UUID | None, Budget]:
    """The newest budget row of the organization (key ``None``) and, when given, of the
    API key, in one query. A key without a budget of its own is simply absent."""
    rows = Budget.objects.raw(_BUDGETS_LATEST, [organization_id, api_key_id])
    return {row.api_key_id: row for row in rows}


# -- reservations and the ledger --------------------------------------------------------


def reservations_held_before(*, created_before: datetime, limit: int) -> list[Reservation]:
    return list(
        Reservation.objects.filter(status=Reservation.Status.HELD, created_at__lt=created_before).order_by(
            "created_at"
        )[:limit]
    )


def usage_entry_for_task(*, task_id: UUID) -> UsageEntry | None:
    return UsageEntry.objects.filter(task_id=task_id).first()


def _totals() -> dict[str, Any]:
    return {
        "tasks": Count("id"),
        "input_tokens": Sum("input_tokens"),
        "output_tokens": Sum("output_tokens"),
        "cost_usd": Sum("cost_usd"),
    }


def usage_totals(
    *, organization_id: UUID, start: date, end: date, group_by: Literal["day", "model"]
) -> list[dict[str, Any]]:
    """Ledger totals of one organization per UTC day or per model, in one GROUP BY query.

    Each row has ``group`` (a date or a model name), ``tasks``, ``input_tokens``,
    ``output_tokens`` and ``cost_usd``.
    """
    since, until = _utc_range(start, end)
    group = TruncDay("created_at", output_field=DateField(), tzinfo=UTC) if group_by == "day" else F("model")
    rows = (
        UsageEntry.objects.filter(organization_id=organization_id, created_at__gte=since, created_at__lt=until)
        .annotate(group=group)
        .values("group")
        .annotate(**_totals())
        .order_by("group")
    )
    return [dict(row) for row in rows]


def cost_totals(*, day: date, organization_id: UUID | None) -> list[dict[str, Any]]:
    """Ledger totals of one UTC day per organization and model, in one GROUP BY query."""
    since, until = _utc_range(day, day)
    rows = UsageEntry.objects.filter(created_at__gte=since, created_at__lt=until)
    if organization_id is not None:
        rows = rows.filter(organization_id=organization_id)
    totals = rows.values("organization_id", "model").annotate(**_totals()).order_by("organization_id", "model")
    return [dict(row) for row in totals]
