"""Kernel tables: the transactional outbox, its dead letters and idempotency records."""

from __future__ import annotations

from django.db import models


class OutboxEvent(models.Model):
    """A domain event written in the same transaction as the change it describes,
    relayed to Celery after commit. A broker outage delays events, never loses them."""

    event_id = models.UUIDField(unique=True)
    event_type = models.CharField(max_length=100)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    published_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            models.Index(
                fields=["created_at"], name="outbox_unpublished", condition=models.Q(published_at__isnull=True)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id}"


class EventDelivery(models.Model):
    """One subscriber's copy of one event: sent by the relay, confirmed by the handler's
    task when it has handled it (or dead-lettered it). A broker that loses the message
    (Redis restarted empty) leaves the delivery unconfirmed, and the relay sends it again."""

    event = models.ForeignKey(OutboxEvent, on_delete=models.CASCADE, related_name="deliveries")
    handler = models.CharField(max_length=200)
    sent_at = models.DateTimeField()
    sends = models.PositiveIntegerField(default=1, db_default=1)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event", "handler"], name="eventdelivery_once")]
        indexes = [
            models.Index(
                fields=["sent_at"], name="eventdelivery_unconfirmed", condition=models.Q(confirmed_at__isnull=True)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.handler} <- {self.event_id}"


class EventDeadLetter(models.Model):
    """An event one subscriber could not handle: its last retry failed, or no retry
    could help (an event type or payload this release does not know). One row per
    (event, handler); replay sends it to the handler again with a fresh retry count."""

    event_id = models.UUIDField(null=True, blank=True)  # null: the payload had no valid id
    event_type = models.CharField(max_length=100)
    handler = models.CharField(max_length=255)
    payload = models.JSONField()
    attempts = models.PositiveIntegerField()
    error = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)
    failed_at = models.DateTimeField()
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["event_id", "handler"], name="event_dead_letter_event_handler_unique")
        ]
        indexes = [models.Index(fields=["-failed_at"], name="event_dead_letter_failed")]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} for {self.handler}"


class IdempotencyRecord(models.Model):
    """The first answer to a request carrying an ``Idempotency-Key``, per scope (organization)."""

    class Status(models.TextChoices):
        IN_FLIGHT = "in_flight"
        COMPLETE = "complete"

    scope = models.CharField(max_length=64)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.IN_FLIGHT)
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    response_headers = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="idempotency_scope_key_unique")]
        indexes = [models.Index(fields=["created_at"], name="idempotency_created")]

    def __str__(self) -> str:
        return f"{self.scope}:{self.key} ({self.status})"


class TaskRecord(models.Model):
    """One ``django.tasks`` result run by ``kernel.tasks_backend.CeleryPoolBackend``.

    The row is the source of truth for status, attempts, errors and the return value
    (``Task.get_result`` reads it); the Celery message only carries its id.
    """

    class Status(models.TextChoices):  # the values of django.tasks.TaskResultStatus
        READY = "READY"
        RUNNING = "RUNNING"
        FAILED = "FAILED"
        SUCCESSFUL = "SUCCESSFUL"

    id = models.UUIDField(primary_key=True)
    task_path = models.CharField(max_length=255)
    backend = models.CharField(max_length=64)
    queue_name = models.CharField(max_length=32)
    celery_queue = models.CharField(max_length=32)
    priority = models.SmallIntegerField(default=0)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.READY)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    return_value = models.JSONField(null=True, blank=True)
    errors = models.JSONField(default=list)  # [{"exception_class_path": ..., "traceback": ...}]
    worker_ids = models.JSONField(default=list)
    max_attempts = models.PositiveSmallIntegerField()
    time_limit_s = models.FloatField()
    run_after = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField()
    sent_at = models.DateTimeField()  # the last message sent for it (enqueue, retry, sweep)
    started_at = models.DateTimeField(null=True, blank=True)
    last_attempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # READY rows are due at ``run_after``; RUNNING rows belong to their worker until
    # ``lease_until`` (the time limit plus a margin), then the sweeper sends them again.
    lease_until = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            models.Index(
                fields=["status", "enqueued_at"],
                name="task_record_open",
                condition=models.Q(status__in=["READY", "RUNNING"]),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_path} {self.id} ({self.status})"
