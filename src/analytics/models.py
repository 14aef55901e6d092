"""Analytics facts. Fed only by domain events (the outbox), never by reading other
contexts' tables."""

from __future__ import annotations

from django.db import models


class TaskOutcome(models.Model):
    """One row per ``llm.ai_task.finished`` event. A re-run task finishes again and gets
    another row; a redelivered event does not (unique ``event_id``)."""

    event_id = models.UUIDField(unique=True)
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
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["organization_id", "completed_at"], name="outcome_org_completed"),
            models.Index(fields=["task_id"], name="outcome_task"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} {self.status}"
