"""The usage ledger: settle a reservation into an append-only row (one per task, so a
task is charged once), release it on failure or cancel, record response-cache hits."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from django.db import IntegrityError, transaction
from django.db.models.functions import Now

from billing import money, selectors
from billing.models import Reservation as ReservationModel
from billing.models import UsageEntry as UsageEntryModel
from billing.services._common import ReservationNotFound, check_usage, price_row, to_entry, to_reservation
from billing.services.budgets import unhold
from contracts.billing import Reservation, TokenUsage, UsageEntry


def _ledger_append(entry: UsageEntryModel) -> tuple[UsageEntryModel, bool]:
    """Insert ``entry`` unless its task has a row already: ``(row, inserted)``. The unique
    task id, not a prior read, decides, so concurrent writers charge a task once."""
    try:
        with transaction.atomic():
            entry.save(force_insert=True)
    except IntegrityError:
        existing = selectors.usage_entry_for_task(task_id=entry.task_id)
        if existing is None:
            raise
        return existing, False
    return entry, True


def reservation_settle(*, reservation_id: UUID, usage: TokenUsage, model: str | None = None) -> UsageEntry:
    """Charge a task its real cost at the reservation's snapshotted unit prices and free
    the hold. Idempotent: settling again returns the first entry and charges nothing.

    ``model``: another model answered (a fallback): charge at that model's price in force
    today, and book the usage under it. An unknown model raises ``UnknownModel``.

    A reservation the sweeper already released is still charged (the provider did the
    work), without touching ``reserved_usd`` a second time.
    """
    check_usage(usage)
    with transaction.atomic():
        # The row lock serialises concurrent settles and releases of one reservation.
        reservation = ReservationModel.objects.select_for_update().filter(pk=reservation_id).first()
        if reservation is None:
            raise ReservationNotFound()
        if reservation.status == ReservationModel.Status.SETTLED:
            settled = selectors.usage_entry_for_task(task_id=reservation.task_id)
            assert settled is not None, "a settled reservation always has a ledger row"
            return to_entry(settled)
        charged_model = reservation.model
        input_price, output_price = reservation.input_usd_per_mtok, reservation.output_usd_per_mtok
        if model is not None and model != reservation.model:
            row = price_row(model)
            charged_model, input_price, output_price = model, row.input_usd_per_mtok, row.output_usd_per_mtok
        cost = money.cost_of(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            input_usd_per_mtok=input_price,
            output_usd_per_mtok=output_price,
        )
        entry, inserted = _ledger_append(
            UsageEntryModel(
                organization_id=reservation.organization_id,
                api_key_id=reservation.api_key_id,
                task_id=reservation.task_id,
                reservation=reservation,
                model=charged_model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                input_usd_per_mtok=input_price,
                output_usd_per_mtok=output_price,
                cost_usd=cost,
                saved_usd=money.ZERO,
                cached=False,
            )
        )
        held = reservation.amount_usd if reservation.status == ReservationModel.Status.HELD else money.ZERO
        charged = cost if inserted else money.ZERO
        ReservationModel.objects.filter(pk=reservation.pk).update(
            status=ReservationModel.Status.SETTLED, closed_at=Now()
        )
        # The budget rows last: their lock is held until the caller commits, and every
        # submit of the organization waits on it (docs/decisions/submit-path.md).
        unhold(reservation.org_budget_id, held=held, charged=charged)
        unhold(reservation.key_budget_id, held=held, charged=charged)
    return to_entry(entry)


def reservation_release(*, reservation_id: UUID) -> bool:
    """Free a held reservation (the task failed or was cancelled). ``True`` if it was held;
    ``False`` if it was already settled or released, or never existed."""
    with transaction.atomic():
        reservation = ReservationModel.objects.select_for_update().filter(pk=reservation_id).first()
        if reservation is None or reservation.status != ReservationModel.Status.HELD:
            return False
        ReservationModel.objects.filter(pk=reservation.pk).update(
            status=ReservationModel.Status.RELEASED, closed_at=Now()
        )
        # The budget rows last, as in reservation_settle.
        unhold(reservation.org_budget_id, held=reservation.amount_usd, charged=money.ZERO)
        unhold(reservation.key_budget_id, held=reservation.amount_usd, charged=money.ZERO)
    return True


def reservations_held(*, created_before: datetime, limit: int = 500) -> list[Reservation]:
    """Held reservations older than ``created_before``, oldest first (for the llm sweeper)."""
    return [
        to_reservation(row) for row in selectors.reservations_held_before(created_before=created_before, limit=limit)
    ]


def usage_record_cache_hit(
    *, organization_id: UUID, api_key_id: UUID | None, task_id: UUID, model: str, usage: TokenUsage
) -> UsageEntry:
    """Record a response-cache hit: a zero-cost ledger row with what it would have cost at
    the current price (``saved_usd``). Idempotent per task."""
    check_usage(usage)
    price = price_row(model)
    saved = money.cost_of(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        input_usd_per_mtok=price.input_usd_per_mtok,
        output_usd_per_mtok=price.output_usd_per_mtok,
    )
    entry, _ = _ledger_append(
        UsageEntryModel(
            organization_id=organization_id,
            api_key_id=api_key_id,
            task_id=task_id,
            model=model,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            input_usd_per_mtok=price.input_usd_per_mtok,
            output_usd_per_mtok=price.output_usd_per_mtok,
            cost_usd=money.ZERO,
            saved_usd=saved,
            cached=True,
        )
    )
    return to_entry(entry)
