"""AI tasks and their dead letters. Invariants only; the lifecycle lives in services."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q, Value


class AITask(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        PROCESSING = "processing"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    class Priority(models.TextChoices):
        HIGH = "high"
        NORMAL = "normal"
        LOW = "low"

    OPEN = (Status.PENDING, Status.PROCESSING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Cross-context references: a string FK to users (no import), the key by id only.
    organization = models.ForeignKey("users.Organization", on_delete=models.PROTECT, related_name="+")
    api_key_id = models.UUIDField(null=True, blank=True)
    prompt = models.TextField()
    model = models.CharField(max_length=100)
    priority = models.CharField(max_length=8, choices=Priority.choices, default=Priority.NORMAL)
    max_tokens = models.PositiveIntegerField()
    metadata = models.JSONField(default=dict, blank=True)
    callback_url = models.URLField(max_length=2000, null=True, blank=True)
    use_cache = models.BooleanField(default=True)
    request_id = models.CharField(max_length=128, blank=True, default="")
    # A conversation turn: the whole message list ({"role", "content"}; an optional first
    # "system" message) the provider receives. NULL for a plain task (``prompt`` alone).
    messages = models.JSONField(null=True, blank=True)
    # Tried in order after a retryable failure (llm.services.fallback).
    fallback_models = models.JSONField(default=list, db_default=Value([], output_field=models.JSONField()), blank=True)
    # The model of the current attempt; once done, the model that answered.
    served_model = models.CharField(max_length=100, blank=True, default="", db_default="")

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    result = models.TextField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    error_code = models.CharField(max_length=64, null=True, blank=True)
    cached = models.BooleanField(default=False)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    # The price the task was charged at: a later price change rewrites no history.
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    input_usd_per_mtok = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    output_usd_per_mtok = models.DecimalField(max_digits=20, decimal_places=10, null=True, blank=True)
    reservation_id = models.UUIDField(null=True, blank=True)

    class WebhookStatus(models.TextChoices):
        NONE = "none"
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"

    # db_default on the NOT NULL columns added after the first release: an older release
    # inserting without them still works during a rolling deploy (docs/migrations.md).
    webhook_status = models.CharField(
        max_length=10, choices=WebhookStatus.choices, default=WebhookStatus.NONE, db_default=WebhookStatus.NONE
    )
    webhook_attempts = models.PositiveIntegerField(default=0, db_default=0)
    webhook_delivered_at = models.DateTimeField(null=True, blank=True)
    webhook_last_error = models.TextField(blank=True, default="", db_default="")
    # A delivery holds the webhook until this time (one POST at a time); the next attempt
    # is not due before webhook_next_at (its backoff), which is also when the sweeper
    # looks for a retry message that was lost.
    webhook_claimed_until = models.DateTimeField(null=True, blank=True)
    webhook_next_at = models.DateTimeField(null=True, blank=True)

    attempts = models.PositiveIntegerField(default=0)
    lease_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    available_at = models.DateTimeField(null=True, blank=True)
    # NULL while the task waits at the dispatch gate (llm.services.dispatch); set when a
    # message is sent to the broker. ``dispatch_count`` spaces out the sweeper's re-sends.
    dispatched_at = models.DateTimeField(null=True, blank=True)
    dispatch_count = models.PositiveIntegerField(default=0, db_default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "AI task"
        indexes = [
            models.Index(fields=["organization", "-created_at", "-id"], name="aitask_org_created"),
            models.Index(fields=["organization", "status", "-created_at", "-id"], name="aitask_org_status_created"),
            models.Index(
                fields=["status", "created_at"], name="aitask_open", condition=Q(status__in=["pending", "processing"])
            ),
            # The dispatch gate's two hot queries: tasks waiting at the gate, per queue and
            # organization in arrival order; and tasks sent or running, per queue.
            models.Index(
                fields=["priority", "organization", "created_at"],
                name="aitask_held",
                condition=Q(status="pending", dispatched_at__isnull=True),
            ),
            models.Index(
                fields=["priority", "organization"],
                name="aitask_outstanding",
                condition=Q(status="processing") | Q(status="pending", dispatched_at__isnull=False),
            ),
            # The sweeper's stranded-webhook scan: only the (few) pending webhooks.
            models.Index(
                fields=["webhook_next_at"], name="aitask_webhook_pending", condition=Q(webhook_status="pending")
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["pending", "processing", "done", "failed", "cancelled"]),
                name="aitask_status_valid",
            ),
            models.CheckConstraint(condition=Q(max_tokens__gte=1, max_tokens__lte=8192), name="aitask_max_tokens"),
            models.CheckConstraint(condition=Q(cost_usd__gte=0), name="aitask_cost_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class DeadLetter(models.Model):
    """Work that exhausted its retries: the task itself (replay re-runs it with a fresh
    budget reservation) or its webhook (replay delivers it again)."""

    class Kind(models.TextChoices):
        TASK = "task"
        WEBHOOK = "webhook"

    task = models.ForeignKey(AITask, on_delete=models.CASCADE, related_name="dead_letters")
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.TASK, db_default=Kind.TASK)
    reason = models.TextField()
    attempts = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["-created_at"], name="deadletter_created")]

    def __str__(self) -> str:
        return f"dead letter for {self.task_id}"


class DispatchPolicy(models.Model):
    """Per-organization override of the dispatch gate (set in the admin)."""

    organization = models.OneToOneField("users.Organization", on_delete=models.CASCADE, related_name="+")
    max_in_flight = models.PositiveIntegerField(
        help_text="Calls in flight per queue while other organizations wait (0: no cap, fair share only)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "dispatch policy"
        verbose_name_plural = "dispatch policies"

    def __str__(self) -> str:
        return f"dispatch policy of {self.organization_id}"
