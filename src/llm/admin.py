"""Admin: AI tasks (filters, re-run failed), dead letters (replay), dispatch policies."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from kernel.errors import DomainError
from llm import services
from llm.models import AITask, DeadLetter, DispatchPolicy


@admin.register(AITask)
class AITaskAdmin(admin.ModelAdmin[AITask]):
    list_display = [
        "id",
        "organization",
        "status",
        "priority",
        "model",
        "served_model",
        "attempts",
        "cached",
        "cost_usd",
        "created_at",
        "completed_at",
    ]
    list_filter = ["status", "priority", "model", "cached", "created_at"]
    search_fields = ["id", "organization__name", "request_id"]
    list_select_related = ["organization"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    readonly_fields = [field.name for field in AITask._meta.fields]
    actions = ["rerun_failed"]
    show_full_result_count = False  # COUNT(*) over a large task table is slow

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Re-run selected failed tasks")
    def rerun_failed(self, request: HttpRequest, queryset: QuerySet[AITask]) -> None:
        done = 0
        for task_id in queryset.filter(status=AITask.Status.FAILED).values_list("id", flat=True):
            try:
                services.task_rerun(task_id=task_id)
                done += 1
            except DomainError as exc:
                self.message_user(request, f"{task_id}: {exc.detail}", messages.WARNING)
        self.message_user(request, f"Re-queued {done} task(s).", messages.SUCCESS)


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin[DeadLetter]):
    list_display = ["id", "task", "attempts", "reason", "created_at", "replayed_at"]
    list_filter = ["replayed_at", "created_at"]
    search_fields = ["task__id", "reason"]
    list_select_related = ["task"]
    readonly_fields = ["task", "reason", "attempts", "created_at", "replayed_at"]
    actions = ["replay"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Replay selected dead letters")
    def replay(self, request: HttpRequest, queryset: QuerySet[DeadLetter]) -> None:
        done = 0
        for letter_id in queryset.filter(replayed_at__isnull=True).values_list("id", flat=True):
            try:
                services.dead_letter_replay(dead_letter_id=letter_id)
                done += 1
            except DomainError as exc:
                self.message_user(request, f"dead letter {letter_id}: {exc.detail}", messages.WARNING)
        self.message_user(request, f"Replayed {done} dead letter(s).", messages.SUCCESS)


@admin.register(DispatchPolicy)
class DispatchPolicyAdmin(admin.ModelAdmin[DispatchPolicy]):
    """Per-organization cap on calls in flight while other organizations wait."""

    list_display = ["organization", "max_in_flight", "updated_at"]
    search_fields = ["organization__name"]
    autocomplete_fields = ["organization"]
    list_select_related = ["organization"]
