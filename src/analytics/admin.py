from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from analytics.models import Export, TaskOutcome


@admin.register(TaskOutcome)
class TaskOutcomeAdmin(admin.ModelAdmin[TaskOutcome]):
    list_display = ["task_id", "organization_id", "status", "model", "priority", "cost_usd", "occurred_at"]
    list_filter = ["status", "model", "priority", "cached"]
    search_fields = ["task_id", "organization_id"]
    date_hierarchy = "occurred_at"  # the partition key: a month in the hierarchy reads one partition
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskOutcome | None = None) -> bool:
        return False


@admin.register(Export)
class ExportAdmin(admin.ModelAdmin[Export]):
    list_display = ["id", "organization_id", "status", "row_count", "start", "end", "created_at", "finished_at"]
    list_filter = ["status"]
    search_fields = ["id", "organization_id"]
    readonly_fields = [field.name for field in Export._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Export | None = None) -> bool:
        return False
