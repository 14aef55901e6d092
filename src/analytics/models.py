"""Analytics facts. Fed only by domain events (the outbox), never by reading other
contexts' tables.

``analytics_taskoutcome`` is partitioned by month on ``occurred_at`` (PostgreSQL
declarative partitioning, migration 0002; partitions managed by
``analytics.partitions``). Django does not know about partitions: the model describes
the parent table, and every query goes through it.
"""

from __future__ import annotations

import uuid

from django.contrib.postgres.indexes import BrinIndex
from django.db import models


class TaskOutcome(models.Model):
    """One row per ``llm.ai_task.finished`` event. A re-run task finishes again and gets
    another row; a redelivered event does not (unique ``(event_id, occurred_at)``:
    a unique constraint on a partitioned table must contain the partition key, and
    ``occurred_at`` comes from the event itself, so a redelivery carries the same one).

    The table's real primary key is ``(id, occurred_at)`` for the same reason; ``id``
    comes from one identity sequence, so it alone is unique too and Django may treat
    it as the primary key.
    """

    event_id = models.UUIDField()
    task_id = models.UUIDField()
    organization_id = models.UUIDField()
    status = models.CharField(max_length=12)
    model = models.CharField(max_length=100)
    priority = models.CharField(max_length=8)
    cached = models.BooleanField()
    attempts = models.PositiveIntegerField()
    input_tokens = models.PositiveIntegerField()
    output_tokens = models.PositiveIntegerField()
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10)
    error_code = models.CharField(max_length=64, blank=True, default="")
    duration_seconds = models.FloatField(null=True, blank=True)
    completed_at = models.DateTimeField()
    occurred_at = models.DateTimeField(help_text="When the event happened (the partition key).")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event_id", "occurred_at"], name="outcome_event_unique")]
        indexes = [
            models.Index(fields=["organization_id", "occurred_at"], name="outcome_org_occurred"),
            models.Index(fields=["task_id"], name="outcome_task"),
            # Rows arrive in time order, so a BRIN index of a few pages answers the
            # cross-organization time scans (exports cleanup, reports) of a partition.
            BrinIndex(fields=["occurred_at"], name="outcome_occurred_brin"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} {self.status}"


class Export(models.Model):
    """A CSV export of one organization's outcomes in ``[start, end)``, written by a
    Celery task on the ``low`` queue into the exports storage."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization_id = models.UUIDField()
    start = models.DateTimeField()
    end = models.DateTimeField()
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    row_count = models.PositiveBigIntegerField(default=0)
    file_name = models.CharField(max_length=255, blank=True, default="")
    error = models.CharField(max_length=255, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(fields=["organization_id", "-created_at"], name="export_org_created"),
            models.Index(fields=["status", "created_at"], name="export_status_created"),
        ]

    def __str__(self) -> str:
        return f"export {self.id} {self.status}"
