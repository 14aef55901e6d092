"""Billing tables: the price catalog, monthly budgets, reservations and the usage ledger.

Invariants only (uniqueness, non-negative money, valid states); the rules live in
``billing.services``. Other contexts are referenced by id, never by import: an
organization or API key is a UUID here, so billing rows outlive nothing and cascade
from nothing. Money is ``DecimalField(20, 10)`` everywhere (USD).
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q


class Price(models.Model):
    """Unit prices of one model from ``valid_from`` until the next row of that model.

    Prices change by adding a row, never by editing history: reservations and ledger
    rows snapshot the unit prices they were charged at anyway.
    """

    model = models.CharField(max_length=100)
    provider = models.CharField(max_length=32)
    input_usd_per_mtok = models.DecimalField(
        max_digits=20, decimal_places=10, help_text="USD per million input tokens."
    )
    output_usd_per_mtok = models.DecimalField(
        max_digits=20, decimal_places=10, help_text="USD per million output tokens."
    )
    valid_from = models.DateField(help_text="First UTC day this price applies.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model", "-valid_from"]
        constraints = [
            models.UniqueConstraint(fields=["model", "valid_from"], name="price_model_valid_from_unique"),
            models.CheckConstraint(
                condition=Q(input_usd_per_mtok__gte=0, output_usd_per_mtok__gte=0), name="price_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} from {self.valid_from}"


class Budget(models.Model):
    """One scope's budget for one UTC calendar month.

    The scope is an organization (``api_key_id`` null) or one API key of it. Rows are
    opened lazily on first use in a month, carrying the limit of the scope's previous
    row (or ``DEFAULT_MONTHLY_BUDGET_USD`` for an organization's first). ``spent_usd``
    and ``reserved_usd`` only ever change through single conditional UPDATEs.
    """

    organization_id = models.UUIDField()
    api_key_id = models.UUIDField(null=True, blank=True, help_text="Empty: the organization-wide budget.")
    period = models.DateField(help_text="First day of the UTC month.")
    limit_usd = models.DecimalField(max_digits=20, decimal_places=10)
    spent_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    reserved_usd = models.DecimalField(max_digits=20, decimal_places=10, default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # nulls_distinct=False: one organization-wide row per month, not one per NULL.
            models.UniqueConstraint(
                fields=["organization_id", "api_key_id", "period"], nulls_distinct=False, name="budget_scope_period"
            ),
            models.CheckConstraint(
                condition=Q(limit_usd__gte=0, spent_usd__gte=0, reserved_usd__gte=0), name="budget_non_negative"
            ),
        ]

    def __str__(self) -> str:
        scope = f"key {self.api_key_id}" if self.api_key_id else "organization"
        return f"{self.organization_id} {scope} {self.period:%Y-%m}"


class Reservation(models.Model):
    """Money held for one task between submit and settle (or release)."""

    class Status(models.TextChoices):
        HELD = "held"
        SETTLED = "settled"
        RELEASED = "released"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization_id = models.UUIDField()
    api_key_id = models.UUIDField(null=True, blank=True)
    task_id = models.UUIDField()
    model = models.CharField(max_length=100)
    amount_usd = models.DecimalField(max_digits=20, decimal_places=10)
    # Snapshot of the catalog at reservation time: settlement charges these, whatever
    # the catalog says by then.
    input_usd_per_mtok = models.DecimalField(max_digits=20, decimal_places=10)
    output_usd_per_mtok = models.DecimalField(max_digits=20, decimal_places=10)
    org_budget = models.ForeignKey(Budget, on_delete=models.PROTECT, related_name="+")
    key_budget = models.ForeignKey(Budget, on_delete=models.PROTECT, related_name="+", null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.HELD)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # The sweeper's query: held reservations older than a cutoff.
            models.Index(fields=["created_at"], name="reservation_held_created", condition=Q(status="held")),
            models.Index(fields=["task_id"], name="reservation_task"),
        ]
        constraints = [
            # A task holds at most one reservation at a time (a re-run gets a new one).
            models.UniqueConstraint(
                fields=["task_id"], condition=Q(status="held"), name="reservation_one_held_per_task"
            ),
            models.CheckConstraint(condition=Q(status__in=["held", "settled", "released"]), name="reservation_status"),
            models.CheckConstraint(condition=Q(amount_usd__gte=0), name="reservation_amount_non_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class UsageEntry(models.Model):
    """The append-only usage ledger: one row per task, so a task is charged at most once.

    A database trigger (migration 0003) refuses UPDATE and DELETE on this table.
    """

    organization_id = models.UUIDField()
    api_key_id = models.UUIDField(null=True, blank=True)
    task_id = models.UUIDField(unique=True)
    reservation = models.ForeignKey(Reservation, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=100)
    input_tokens = models.PositiveIntegerField()
    output_tokens = models.PositiveIntegerField()
    input_usd_per_mtok = models.DecimalField(max_digits=20, decimal_places=10)
    output_usd_per_mtok = models.DecimalField(max_digits=20, decimal_places=10)
    cost_usd = models.DecimalField(max_digits=20, decimal_places=10)
    saved_usd = models.DecimalField(
        max_digits=20, decimal_places=10, default=0, help_text="What a response-cache hit would have cost."
    )
    cached = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "usage entry"
        verbose_name_plural = "usage ledger"
        indexes = [
            models.Index(fields=["organization_id", "created_at"], name="usage_org_created"),
            models.Index(fields=["created_at"], name="usage_created"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(cost_usd__gte=0, saved_usd__gte=0), name="usage_money_non_negative"),
        ]

    def __str__(self) -> str:
        return f"task {self.task_id}: {self.cost_usd} USD"
