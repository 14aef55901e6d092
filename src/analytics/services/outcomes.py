"""Recording task outcomes from domain events, once per event, into the monthly
partitions; and their plain totals. Aggregations run in SQL."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import structlog
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, Sum

from analytics.models import TaskOutcome
from analytics.services import partitions, summary
from contracts.analytics import OutcomeTotals
from contracts.events import AITaskFinished
from kernel.db import replica_reads

log = structlog.get_logger(__name__)

# The unique key holds the partition key (PostgreSQL requires it of a partitioned
# table); a redelivered event carries the same occurred_at, so it conflicts and is skipped.
_INSERT = """
INSERT INTO analytics_taskoutcome (
    event_id, task_id, organization_id, status, model, priority, cached, attempts, input_tokens,
    output_tokens, cost_usd, error_code, duration_seconds, completed_at, occurred_at, recorded_at
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, now())
ON CONFLICT (event_id, occurred_at) DO NOTHING RETURNING id
"""


def task_outcome_record(event: AITaskFinished) -> bool:
    """Store one finished task; return False when this event was already recorded
    (events are delivered at least once) or is older than the retention."""
    if partitions.month_of(event.occurred_at) < partitions.retention_cutoff():
        log.info("analytics_event_past_retention", event_id=str(event.event_id))
        return False
    params = [
        event.event_id,
        event.task_id,
        event.organization_id,
        event.status,
        event.model,
        event.priority,
        event.cached,
        event.attempts,
        event.input_tokens,
        event.output_tokens,
        event.cost_usd,
        event.error_code or "",
        event.duration_seconds,
        event.completed_at,
        event.occurred_at,
    ]
    try:
        created = _insert(params)
    except IntegrityError as exc:
        if "no partition" not in str(exc):
            raise
        # Beat keeps months ahead created; this covers a beat that has not run yet.
        partitions.partition_create(partitions.month_of(event.occurred_at))
        created = _insert(params)
    if created:
        organization_id = event.organization_id
        transaction.on_commit(lambda: summary.summary_invalidate(organization_id=organization_id))
    return created


def _insert(params: list[Any]) -> bool:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_INSERT, params)
        return cursor.fetchone() is not None


@replica_reads  # a report: may lag the primary by the replica's delay
def outcome_totals(*, organization_id: UUID, start: datetime, end: datetime) -> OutcomeTotals:
    """Totals of tasks finished in ``[start, end)`` for one organization."""
    outcomes = TaskOutcome.objects.filter(organization_id=organization_id, occurred_at__gte=start, occurred_at__lt=end)
    by_status = dict(outcomes.values_list("status").annotate(n=Count("id")).order_by())
    sums = outcomes.aggregate(i=Sum("input_tokens"), o=Sum("output_tokens"), c=Sum("cost_usd"))
    return OutcomeTotals(
        by_status={str(k): int(v) for k, v in by_status.items()},
        input_tokens=sums["i"] or 0,
        output_tokens=sums["o"] or 0,
        cost_usd=sums["c"] or Decimal(0),
    )
