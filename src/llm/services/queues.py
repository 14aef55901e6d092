"""What the queues look like, read from PostgreSQL (the dispatch gate keeps the broker's
lists short on purpose, so the broker's length says nothing about the backlog).

- ``queue_depths()``: pending AI tasks per queue, optionally of one organization (the
  analytics dashboard).
- ``queue_stats()``: one query over the open-task index: per queue the pending tasks held
  at the gate and the ones already sent to the broker, the ones processing, and the age of
  the oldest pending task that is due (``now() - COALESCE(available_at, created_at)`` on
  the database's clock). ``/metrics`` calls it at every scrape (``queue_gauges``, llm.apps).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast
from uuid import UUID

from django.db import connections
from django.db.models import Count, Q

from contracts.llm import QUEUE_FOR_PRIORITY, QueueDepth, QueueName, QueueStats, TaskPriority
from kernel.metrics import Gauge
from llm.models import AITask


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
            priority=cast("TaskPriority", priority),
            pending=rows.get(priority, {}).get("pending", 0),
            held=rows.get(priority, {}).get("held", 0),
        )
        for priority, queue in QUEUE_FOR_PRIORITY.items()
    ]


def queue_stats() -> list[QueueStats]:
    """One row per queue (every queue, zeros included), in one SQL query."""
    table = AITask._meta.db_table
    sql = (
        "SELECT priority, "  # noqa: S608 - the table name comes from the model
        "  count(*) FILTER (WHERE status = 'pending' AND dispatched_at IS NULL), "
        "  count(*) FILTER (WHERE status = 'pending' AND dispatched_at IS NOT NULL), "
        "  count(*) FILTER (WHERE status = 'processing'), "
        "  COALESCE(EXTRACT(EPOCH FROM now() - min(COALESCE(available_at, created_at)) "
        "    FILTER (WHERE status = 'pending' AND COALESCE(available_at, created_at) <= now())), 0) "
        f"FROM {table} WHERE status IN ('pending', 'processing') GROUP BY priority"
    )
    found: dict[str, QueueStats] = {}
    for priority, held, sent, processing, age in _rows(sql):
        queue = QUEUE_FOR_PRIORITY[priority]
        found[queue] = QueueStats(
            queue=cast("QueueName", queue),
            held=int(held),
            sent=int(sent),
            processing=int(processing),
            oldest_pending_age_s=max(float(age), 0.0),
        )
    return [
        found.get(q) or QueueStats(queue=cast("QueueName", q), held=0, sent=0, processing=0, oldest_pending_age_s=0.0)
        for q in sorted(set(QUEUE_FOR_PRIORITY.values()))
    ]


def _rows(sql: str) -> list[tuple[str, int, int, int, float]]:
    with connections["default"].cursor() as cursor:  # the primary: a replica may lag
        cursor.execute(sql)
        return list(cursor.fetchall())


def queue_gauges() -> Iterable[Gauge]:
    """The scrape-time gauges of the llm context (kernel.metrics.register_scrape_source)."""
    stats = queue_stats()
    depth = Gauge("switchyard_queue_depth", "Pending AI tasks per queue (held at the gate + sent)", ("queue", "where"))
    age = Gauge("switchyard_queue_oldest_age_seconds", "Age of the oldest due pending AI task per queue", ("queue",))
    open_tasks = Gauge("switchyard_open_tasks", "Open AI tasks by status and queue", ("status", "queue"))
    for row in stats:
        depth.samples.extend([((row.queue, "held"), row.held), ((row.queue, "sent"), row.sent)])
        age.samples.append(((row.queue,), row.oldest_pending_age_s))
        open_tasks.samples.extend([(("pending", row.queue), row.depth), (("processing", row.queue), row.processing)])
    return [depth, age, open_tasks]
