"""Admin of the chat context: assistants, and conversations with their turns (read-only:
turns are written by the turn service only)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from chat.models import Assistant, Conversation, Turn


@admin.register(Assistant)
class AssistantAdmin(admin.ModelAdmin[Assistant]):
    list_display = ["name", "organization", "model", "default_priority", "context_token_budget", "created_at"]
    list_filter = ["model", "default_priority", "created_at"]
    search_fields = ["id", "name", "organization__name"]
    list_select_related = ["organization"]
    ordering = ["-created_at"]
    readonly_fields = ["id", "created_at", "updated_at"]


class TurnInline(admin.TabularInline[Turn, Conversation]):
    model = Turn
    extra = 0
    can_delete = False
    ordering = ["created_at"]
    fields = ("created_at", "status", "content", "reply", "task_id", "input_tokens", "output_tokens")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Conversation | None = None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin[Conversation]):
    list_display = ["id", "title", "organization", "assistant", "model", "turn_count", "created_at"]
    list_filter = ["model", "priority", "created_at"]
    search_fields = ["id", "title", "organization__name", "assistant__name"]
    list_select_related = ["organization", "assistant"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    show_full_result_count = False
    readonly_fields = [
        "id",
        "organization",
        "assistant",
        "active_turn_id",
        "turn_count",
        "answered_turns",
        "created_at",
        "updated_at",
    ]
    inlines = [TurnInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
