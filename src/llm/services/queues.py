"""Queue depth for dashboards: AI tasks waiting per queue. One aggregate query."""

from __future__ import annotations

from typing import Literal, cast
from uuid import UUID

from django.db.models import Count, Q

from contracts.llm import QUEUE_FOR_PRIORITY, QueueDepth
from llm.models import AITask

QueueName = Literal["priority", "default", "low"]
PriorityName = Literal["high", "normal", "low"]


def queue_depths(*, organization_id: UUID | None = None) -> list[QueueDepth]:
    """Pending AI tasks per queue (all organizations unless one is given); ``held`` of
    them still wait at the dispatch gate. Every queue is listed, empty ones with 0."""
    tasks = AITask.objects.filter(status=AITask.Status.PENDING)
    if organization_id is not None:
        tasks = tasks.filter(organization_id=organization_id)
    counts = tasks.values("priority").annotate(
        pending=Count("id"), held=Count("id", filter=Q(dispatched_at__isnull=True))
    )
    rows: dict[str, dict[str, int]] = {
        str(row["priority"]): {"pending": int(row["pending"]), "held": int(row["held"])} for row in counts.order_by()
    }
    return [
        QueueDepth(
            queue=cast("QueueName", queue),
            priority=cast("PriorityName", priority),
            pending=rows.get(priority, {}).get("pending", 0),
            held=rows.get(priority, {}).get("held", 0),
        )
        for priority, queue in QUEUE_FOR_PRIORITY.items()
    ]
