from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from analytics.models import TaskOutcome


@admin.register(TaskOutcome)
class TaskOutcomeAdmin(admin.ModelAdmin[TaskOutcome]):
    list_display = ["task_id", "organization_id", "status", "model", "priority", "cost_usd", "completed_at"]
    list_filter = ["status", "model", "priority", "cached"]
    search_fields = ["task_id", "organization_id"]
    date_hierarchy = "completed_at"
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskOutcome | None = None) -> bool:
        return False
