"""Admin: the outbox, its dead letters (read-only, replay), idempotency records and django.tasks results."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from kernel import services
from kernel.errors import DomainError
from kernel.models import EventDeadLetter, IdempotencyRecord, OutboxEvent, TaskRecord


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin[OutboxEvent]):
    list_display = ["event_type", "event_id", "created_at", "published_at", "attempts"]
    list_filter = ["event_type", "published_at"]
    search_fields = ["event_id"]
    readonly_fields = ["event_id", "event_type", "payload", "created_at", "published_at", "attempts", "last_error"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(EventDeadLetter)
class EventDeadLetterAdmin(admin.ModelAdmin[EventDeadLetter]):
    list_display = ["event_type", "event_id", "handler", "attempts", "failed_at", "replayed_at"]
    list_filter = ["event_type", "handler", "replayed_at"]
    search_fields = ["event_id", "handler"]
    ordering = ["-failed_at"]
    readonly_fields = [field.name for field in EventDeadLetter._meta.fields]
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: EventDeadLetter | None = None) -> bool:
        return False  # the record of what was lost stays; replay is the way out

    @admin.action(description="Replay selected events", permissions=["change"])
    def replay(self, request: HttpRequest, queryset: QuerySet[EventDeadLetter]) -> None:
        done = 0
        for letter_id in queryset.values_list("id", flat=True):
            try:
                services.event_dead_letter_replay(dead_letter_id=letter_id)
                done += 1
            except DomainError as exc:
                self.message_user(request, f"dead letter {letter_id}: {exc.detail}", messages.WARNING)
        self.message_user(request, f"Replayed {done} event(s).", messages.SUCCESS)


@admin.register(IdempotencyRecord)
class IdempotencyRecordAdmin(admin.ModelAdmin[IdempotencyRecord]):
    list_display = ["scope", "key", "status", "response_status", "created_at"]
    list_filter = ["status"]
    search_fields = ["scope", "key"]
    readonly_fields = [
        "scope",
        "key",
        "fingerprint",
        "status",
        "response_status",
        "response_body",
        "response_headers",
        "created_at",
        "updated_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(TaskRecord)
class TaskRecordAdmin(admin.ModelAdmin[TaskRecord]):
    """django.tasks results (kernel.tasks_backend), read-only: arguments may be personal data."""

    list_display = ["task_path", "status", "celery_queue", "enqueued_at", "finished_at"]
    list_filter = ["status", "celery_queue", "task_path"]
    search_fields = ["id", "task_path"]
    ordering = ["-enqueued_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskRecord | None = None) -> bool:
        return False
