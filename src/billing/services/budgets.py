"""Monthly budgets and reservations: hold an estimate before a task is queued.

Budget counters change only through single conditional UPDATEs, so spent + reserved
never passes the limit however many submits race (docs/decisions/billing.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal, InvalidOperation
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models.functions import Now

from billing import money, selectors
from billing.models import Budget
from billing.models import Price as PriceModel
from billing.models import Reservation as ReservationModel
from billing.services import budget_rows
from billing.services._common import BudgetExceeded, InvalidBillingRequest, price_row, to_reservation, to_status
from contracts.billing import BudgetStatus, Reservation, ReservationRequest
from kernel import metrics, writes
from kernel.db import insert_row

MAX_LIMIT_USD = Decimal("1e10")  # DecimalField(20, 10) holds ten integer digits


def _default_limit() -> Decimal:
    return Decimal(settings.DEFAULT_MONTHLY_BUDGET_USD)


def _budget_open(*, organization_id: UUID, api_key_id: UUID | None, period: date, limit: Decimal) -> Budget:
    """The scope's row for ``period``, created on first use (concurrent creators meet at
    the unique constraint; ``get_or_create`` then reads the winner's row)."""
    row, _ = Budget.objects.get_or_create(
        organization_id=organization_id, api_key_id=api_key_id, period=period, defaults={"limit_usd": limit}
    )
    return row


def _budgets_for(*, organization_id: UUID, api_key_id: UUID | None, period: date) -> tuple[Budget, Budget | None]:
    """The organization's row and, if the key has a budget of its own, the key's row for
    ``period``. One query when both are open already; a new month opens rows carrying
    the scope's last limit."""
    latest = selectors.budgets_latest(organization_id=organization_id, api_key_id=api_key_id)
    org = latest.get(None)
    if org is None or org.period != period:
        org = _budget_open(
            organization_id=organization_id,
            api_key_id=None,
            period=period,
            limit=org.limit_usd if org else _default_limit(),
        )
    key = latest.get(api_key_id) if api_key_id is not None else None
    if key is not None and key.period != period:
        key = _budget_open(organization_id=organization_id, api_key_id=api_key_id, period=period, limit=key.limit_usd)
    return org, key


@contextmanager
def budget_transaction(*, atomic: bool = True) -> Iterator[None]:
    """A block whose budget holds and settlements run last (``kernel.writes.writes_last``),
    sent with its COMMIT when it is the outermost transaction, so the organization's budget
    row is locked for no client round trip. ``atomic=False``: the block opens no
    transaction and every write in it is deferred (``budget_reserve``'s reservation, the
    caller's rows through ``kernel.db.insert_row``), so it all goes in one
    ``BEGIN; ...; COMMIT``. A hold without room rolls the whole block back and raises
    ``BudgetExceeded`` (docs/decisions/submit-path.md)."""
    try:
        with writes.writes_last(atomic=atomic):
            yield
    except DatabaseError as exc:
        refused = budget_rows.refused(exc)
        if refused is None:
            raise
        raise _refusal(*refused) from None


def _hold(budget: Budget, amount: Decimal) -> None:
    """Add ``amount`` to the row's reservations, or raise ``HoldRefused``:
    ``billing_budget_hold``, one conditional UPDATE in the database.

    PostgreSQL re-checks the WHERE clause on the newest row version after waiting for a
    concurrent writer's lock, so racing holds are serialised by the row lock and the sum
    can never pass the limit. Inside ``budget_transaction`` the hold is deferred to the
    block's end, after every other write of it.
    """
    if writes.defer(budget_rows.HOLD, [budget.pk, amount], last=True):
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute(budget_rows.HOLD, [budget.pk, amount])
    except DatabaseError as exc:
        refused = budget_rows.refused(exc)
        if refused is None:
            raise
        raise HoldRefused(*refused) from None


class HoldRefused(Exception):
    """The budget row had no room (its transaction must go back to a savepoint)."""

    def __init__(self, budget_id: int, amount: Decimal) -> None:
        super().__init__(budget_id, amount)
        self.budget_id, self.amount = budget_id, amount


def _refusal(budget_id: int, amount: Decimal) -> BudgetExceeded:
    row = Budget.objects.get(pk=budget_id)
    remaining = max(row.limit_usd - row.spent_usd - row.reserved_usd, money.ZERO)
    scope = "this API key's" if row.api_key_id else "the organization's"
    metrics.BUDGET_REJECTIONS.labels(reason="api_key" if row.api_key_id else "organization").inc()
    return BudgetExceeded(
        f"This request needs up to {money.as_string(amount)} USD; {scope} monthly budget has "
        f"{money.as_string(remaining)} USD left.",
        remaining_usd=money.as_string(remaining),
        required_usd=money.as_string(amount),
    )


def unhold(budget_id: int | None, *, held: Decimal, charged: Decimal) -> None:
    """Move a reservation out of ``reserved_usd`` and its real cost into ``spent_usd``
    (at the end of the block, after its other writes, inside ``budget_transaction``)."""
    if budget_id is None or writes.defer(budget_rows.UNHOLD, [held, charged, budget_id], last=True):
        return
    with connection.cursor() as cursor:
        cursor.execute(budget_rows.UNHOLD, [held, charged, budget_id])


def budget_reserve(request: ReservationRequest) -> Reservation:
    """Hold the estimated cost of a task against the organization's (and the key's own)
    budget for this month, snapshotting the unit prices of ``model``; the amount held is
    the estimate at the dearest of ``model`` and its fallbacks. Raises ``UnknownModel`` or
    ``BudgetExceeded`` (402). Reserving again for a task that already holds one returns
    the existing reservation. Inside ``budget_transaction`` the reservation and the holds
    are written at the block's end, the holds after every other write of the block."""
    if request.estimated_input_tokens < 0 or request.max_output_tokens < 0:
        raise InvalidBillingRequest("Token counts must not be negative.")
    price = price_row(request.model)
    amount = max(
        money.cost_of(
            input_tokens=request.estimated_input_tokens,
            output_tokens=request.max_output_tokens,
            input_usd_per_mtok=row.input_usd_per_mtok,
            output_usd_per_mtok=row.output_usd_per_mtok,
        )
        for row in [price, *(price_row(model) for model in request.fallback_models if model != request.model)]
    )
    # BEGIN when called alone; nothing when the caller's transaction is open already, or
    # inside budget_transaction, whose end writes everything in one transaction.
    with contextlib.nullcontext() if writes.deferring() else transaction.atomic(savepoint=False):
        outcome = _reserve(request, price, amount)
    if isinstance(outcome, BudgetExceeded):
        raise outcome
    return to_reservation(outcome)


def _reserve(request: ReservationRequest, price: PriceModel, amount: Decimal) -> ReservationModel | BudgetExceeded:
    """Insert the reservation, then hold: the holds lock the budget rows until the
    transaction commits and every submit of the organization queues on that lock, so they
    come last (issue 9). Outside ``budget_transaction`` a savepoint taken first and left
    open on success lets a duplicate or a refusal roll back to it and leave the caller's
    transaction usable; inside, both are written at the block's end, and a duplicate or a
    refusal fails the whole block."""
    org, key = _budgets_for(
        organization_id=request.organization_id, api_key_id=request.api_key_id, period=money.current_period()
    )
    row = ReservationModel(
        organization_id=request.organization_id,
        api_key_id=request.api_key_id,
        task_id=request.task_id,
        model=request.model,
        amount_usd=amount,
        input_usd_per_mtok=price.input_usd_per_mtok,
        output_usd_per_mtok=price.output_usd_per_mtok,
        org_budget_id=org.pk,
        key_budget_id=key.pk if key else None,
    )
    savepoint = None if writes.deferring() else transaction.savepoint_create()
    try:
        insert_row(row)
    except IntegrityError:
        # reservation_one_held_per_task: the task holds one already; nothing was held.
        if savepoint is None:  # deferred writes raise at the block's end, not here
            raise
        _back_to(savepoint)
        existing = ReservationModel.objects.filter(task_id=request.task_id, status=ReservationModel.Status.HELD).first()
        if existing is None:
            raise
        return existing
    try:
        # Always organization first, then key: every writer locks budget rows in the
        # same order, so concurrent reservations and settlements cannot deadlock.
        _hold(org, amount)
        if key is not None:
            _hold(key, amount)
    except HoldRefused as refused:
        if savepoint is None:  # deferred holds raise at the block's end, not here
            raise
        _back_to(savepoint)
        return _refusal(refused.budget_id, refused.amount)
    return row


def _back_to(savepoint: str) -> None:
    """Roll back to ``savepoint``; the transaction is good again from there (the failed
    INSERT marked it for rollback; the savepoint is the known-good state before it)."""
    transaction.set_rollback(False)
    transaction.savepoint_rollback(savepoint)


def budget_status(*, organization_id: UUID, api_key_id: UUID | None = None) -> BudgetStatus:
    """This month's budget of the organization, or of the API key if given and it has a
    budget of its own. Reads only: a month nobody has spent in yet shows the carried
    limit with nothing spent."""
    period = money.current_period()
    latest = selectors.budgets_latest(organization_id=organization_id, api_key_id=api_key_id)
    row = latest.get(api_key_id) if api_key_id is not None and api_key_id in latest else latest.get(None)
    if row is None:
        return to_status(period=period, limit=_default_limit(), spent=money.ZERO, reserved=money.ZERO)
    if row.period != period:
        return to_status(period=period, limit=row.limit_usd, spent=money.ZERO, reserved=money.ZERO)
    return to_status(period=period, limit=row.limit_usd, spent=row.spent_usd, reserved=row.reserved_usd)


def budget_set(*, organization_id: UUID, limit_usd: Decimal, api_key_id: UUID | None = None) -> BudgetStatus:
    """Set the monthly limit of the organization (or of one of its API keys) from this
    month on; later months carry it. ``0`` blocks all paid work."""
    try:
        valid = limit_usd.is_finite() and money.ZERO <= limit_usd < MAX_LIMIT_USD
    except (AttributeError, InvalidOperation):
        valid = False
    if not valid:
        raise InvalidBillingRequest(f"A monthly limit must be between 0 and {MAX_LIMIT_USD:f} USD.")
    limit = money.quantize(limit_usd)
    with transaction.atomic():
        row = _budget_open(
            organization_id=organization_id, api_key_id=api_key_id, period=money.current_period(), limit=limit
        )
        Budget.objects.filter(pk=row.pk).update(limit_usd=limit, updated_at=Now())
    return budget_status(organization_id=organization_id, api_key_id=api_key_id)
