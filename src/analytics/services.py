"""Public surface of the analytics context: recording task outcomes from domain events
and reading their totals. Aggregations run in SQL."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from django.db.models import Count, Sum

from analytics.models import TaskOutcome
from contracts.analytics import OutcomeTotals
from contracts.events import AITaskFinished
from kernel.db import replica_reads


def task_outcome_record(event: AITaskFinished) -> bool:
    """Store one finished task; return False when this event was already recorded
    (events are delivered at least once)."""
    _, created = TaskOutcome.objects.get_or_create(
        event_id=event.event_id,
        defaults={
            "task_id": event.task_id,
            "organization_id": event.organization_id,
            "status": event.status,
            "model": event.model,
            "priority": event.priority,
            "cached": event.cached,
            "attempts": event.attempts,
            "input_tokens": event.input_tokens,
            "output_tokens": event.output_tokens,
            "cost_usd": event.cost_usd,
            "error_code": event.error_code or "",
            "duration_seconds": event.duration_seconds,
            "completed_at": event.completed_at,
        },
    )
    return created


@replica_reads  # a report: may lag the primary by the replica's delay
def outcome_totals(*, organization_id: UUID, start: datetime, end: datetime) -> OutcomeTotals:
    """Totals of tasks completed in ``[start, end)`` for one organization."""
    outcomes = TaskOutcome.objects.filter(
        organization_id=organization_id, completed_at__gte=start, completed_at__lt=end
    )
    by_status = dict(outcomes.values_list("status").annotate(n=Count("id")).order_by())
    sums = outcomes.aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_usd"))
    return OutcomeTotals(
        by_status={str(k): int(v) for k, v in by_status.items()},
        input_tokens=sums["i"] or 0,
        output_tokens=sums["o"] or 0,
        cost_usd=sums["c"] or Decimal(0),
    )
