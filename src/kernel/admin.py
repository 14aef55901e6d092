from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from kernel.models import IdempotencyRecord, OutboxEvent


@admin.register(OutboxEvent)
class OutboxEventAdmin(admin.ModelAdmin[OutboxEvent]):
    list_display = ["event_type", "event_id", "created_at", "published_at", "attempts"]
    list_filter = ["event_type", "published_at"]
    search_fields = ["event_id"]
    readonly_fields = ["event_id", "event_type", "payload", "created_at", "published_at", "attempts", "last_error"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


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
