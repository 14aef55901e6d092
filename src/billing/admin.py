"""Billing admin: prices are edited (by adding rows, so history stays visible), budget
limits are edited, reservations and the usage ledger are read-only."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from billing import money
from billing.models import Budget, Price, Reservation, UsageEntry


class ReadOnlyAdmin(admin.ModelAdmin[Any]):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Price)
class PriceAdmin(admin.ModelAdmin[Price]):
    """Every row is listed, newest first per model: the price history. To change a price,
    add a row with a new ``valid_from``; rows already in force are read-only (tasks keep
    the price they were charged at in any case)."""

    list_display = ["model", "provider", "input_usd_per_mtok", "output_usd_per_mtok", "valid_from", "created_at"]
    list_filter = ["provider", "model"]
    search_fields = ["model"]
    ordering = ["model", "-valid_from"]
    date_hierarchy = "valid_from"

    def get_readonly_fields(self, request: HttpRequest, obj: Price | None = None) -> list[str]:
        if obj is not None and obj.valid_from <= money.today_utc():
            return ["model", "provider", "input_usd_per_mtok", "output_usd_per_mtok", "valid_from", "created_at"]
        return ["created_at"]

    def has_delete_permission(self, request: HttpRequest, obj: Price | None = None) -> bool:
        return obj is None or obj.valid_from > money.today_utc()


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin[Budget]):
    """Limits are editable; spent and reserved are counters only services move."""

    list_display = ["organization_id", "api_key_id", "period", "limit_usd", "spent_usd", "reserved_usd", "updated_at"]
    list_filter = ["period"]
    search_fields = ["organization_id", "api_key_id"]
    ordering = ["-period", "organization_id"]
    readonly_fields = [
        "organization_id",
        "api_key_id",
        "period",
        "spent_usd",
        "reserved_usd",
        "created_at",
        "updated_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows open lazily; `manage.py set_budget` sets a limit for any scope

    def has_delete_permission(self, request: HttpRequest, obj: Budget | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: Budget, form: Any, change: bool) -> None:
        # Write the limit alone: saving the whole row would overwrite counters that
        # reservations moved since the form was loaded.
        obj.save(update_fields=["limit_usd", "updated_at"])


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    list_display = ["id", "organization_id", "task_id", "model", "amount_usd", "status", "created_at", "closed_at"]
    list_filter = ["status", "model"]
    search_fields = ["id", "task_id", "organization_id"]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(UsageEntry)
class UsageEntryAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "organization_id",
        "task_id",
        "model",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "saved_usd",
        "cached",
    ]
    list_filter = ["cached", "model"]
    search_fields = ["task_id", "organization_id"]
    ordering = ["-created_at"]
    date_hierarchy = "created_at"
    show_full_result_count = False
