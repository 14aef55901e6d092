"""Monthly budgets and reservations: hold an estimate before a task is queued.

Budget counters change only through single conditional UPDATEs, so spent + reserved
never passes the limit however many submits race (docs/decisions/billing.md).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from decimal import Decimal, InvalidOperation
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

from billing import money, selectors
from billing.models import Budget
from billing.models import Price as PriceModel
from billing.models import Reservation as ReservationModel
from billing.services import budget_rows
from billing.services._common import BudgetExceeded, InvalidBillingRequest, price_row, to_reservation, to_status
from contracts.billing import BudgetStatus, Reservation, ReservationRequest
from kernel import metrics, writes

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


# The submit path's writes, written out in SQL like its reads (billing.selectors): the
# queryset and Model.save() machinery cost more CPU than the statements themselves.
_HOLD = (
    f"UPDATE {Budget._meta.db_table} SET reserved_usd = reserved_usd + %s, updated_at = STATEMENT_TIMESTAMP() "  # noqa: S608
    "WHERE id = %s AND limit_usd >= spent_usd + reserved_usd + %s"
)
_RESERVATION_COLUMNS = (
    "id, organization_id, api_key_id, task_id, model, amount_usd, input_usd_per_mtok, output_usd_per_mtok, "
    "org_budget_id, key_budget_id, status, created_at"
)
_RESERVATION_INSERT_DEFERRED = (
    f"INSERT INTO {ReservationModel._meta.db_table} ({_RESERVATION_COLUMNS}) "  # noqa: S608
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'held', %s)"
)
_RESERVATION_INSERT = f"{_RESERVATION_INSERT_DEFERRED} RETURNING *"


@contextmanager
def budget_transaction(*, atomic: bool = True) -> Iterator[None]:
    """A block whose budget holds and settlements run last, sent with its COMMIT when it
    is the outermost transaction, so the organization's budget row is locked for no client
    round trip (``billing.services.budget_rows``, ``kernel.writes``). ``atomic=False``: the
    block opens no transaction and every write in it is deferred (``budget_reserve``'s
    reservation too; the caller's rows through ``kernel.writes``), so it all goes in one
    ``BEGIN; ...; COMMIT``. A hold without room rolls the whole block back and raises
    ``BudgetExceeded``."""
    try:
        with budget_rows.budget_transaction(atomic=atomic):
            yield
    except budget_rows.HoldRefused as refused:
        raise _refusal(refused.budget_id, refused.amount) from None


def _hold(budget: Budget, amount: Decimal) -> None:
    """Add ``amount`` to the row's reservations in one conditional UPDATE, or raise.

    PostgreSQL re-checks the WHERE clause on the newest row version after waiting for a
    concurrent writer's lock, so racing holds are serialised by the row lock and the sum
    can never pass the limit. Inside ``budget_transaction`` the hold is deferred to the
    block's end (``billing_budget_hold``: the same conditional UPDATE, raising on refusal).
    """
    if writes.defer(budget_rows.HOLD, [budget.pk, amount]):
        return
    with connection.cursor() as cursor:
        cursor.execute(_HOLD, [amount, budget.pk, amount])
        if cursor.rowcount:
            return
    raise _refusal(budget.pk, amount)


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
    (at the end of the block inside ``budget_transaction``)."""
    if budget_id is None or writes.defer(budget_rows.UNHOLD, [held, charged, budget_id]):
        return
    Budget.objects.filter(pk=budget_id).update(
        reserved_usd=F("reserved_usd") - held, spent_usd=F("spent_usd") + charged, updated_at=Now()
    )


def budget_reserve(
    request: ReservationRequest, *, before_hold: Callable[[Reservation], None] | None = None
) -> Reservation:
    """Hold the estimated cost of a task against the organization's (and the key's own)
    budget for this month, snapshotting the unit prices of ``model``; the amount held is
    the estimate at the dearest of ``model`` and its fallbacks. Raises ``UnknownModel`` or
    ``BudgetExceeded`` (402). Reserving again for a task that already holds one returns
    the existing reservation.

    ``before_hold`` runs with the new reservation after its row is inserted and before the
    budget rows are held, inside the same savepoint: the caller writes its own row there
    (the task), so after the hold locks the budget rows only COMMIT remains, and a refused
    hold undoes the caller's row with the reservation."""
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
        outcome = _reserve(request, price, amount, before_hold)
    if isinstance(outcome, BudgetExceeded):
        raise outcome
    return to_reservation(outcome)


def _reserve(
    request: ReservationRequest,
    price: PriceModel,
    amount: Decimal,
    before_hold: Callable[[Reservation], None] | None,
) -> ReservationModel | BudgetExceeded:
    """Insert the reservation, let the caller insert its row (``before_hold``), then hold:
    the holds' UPDATEs lock the budget rows until the caller's transaction commits and
    every submit of the organization queues on that lock, so they come last and nothing
    but COMMIT runs after them (issue 9: the profile showed submits waiting on this row).
    The savepoint is taken before and left open on success (COMMIT releases it), so no
    RELEASE runs under the lock; a refusal rolls back to it (the caller's row too) and
    leaves the caller's transaction usable, as a duplicate does."""
    org, key = _budgets_for(
        organization_id=request.organization_id, api_key_id=request.api_key_id, period=money.current_period()
    )
    if writes.deferring():
        return _reserve_deferred(request, price, amount, before_hold, org, key)
    savepoint = transaction.savepoint_create()
    try:
        values: list[object] = [uuid.uuid4(), request.organization_id, request.api_key_id, request.task_id]
        values += [request.model, amount, price.input_usd_per_mtok, price.output_usd_per_mtok]
        values += [org.pk, key.pk if key else None, timezone.now()]  # created_at: auto_now_add's clock
        row = next(iter(ReservationModel.objects.raw(_RESERVATION_INSERT, values)))
    except IntegrityError:
        # reservation_one_held_per_task: the task holds one already; nothing was held.
        _back_to(savepoint)
        existing = ReservationModel.objects.filter(task_id=request.task_id, status=ReservationModel.Status.HELD).first()
        if existing is None:
            raise
        return existing
    try:
        if before_hold is not None:
            before_hold(to_reservation(row))
        # Always organization first, then key: every writer locks budget rows in the
        # same order, so concurrent reservations and settlements cannot deadlock.
        _hold(org, amount)
        if key is not None:
            _hold(key, amount)
    except BudgetExceeded as refused:
        _back_to(savepoint)
        return refused
    return row


def _reserve_deferred(
    request: ReservationRequest,
    price: PriceModel,
    amount: Decimal,
    before_hold: Callable[[Reservation], None] | None,
    org: Budget,
    key: Budget | None,
) -> ReservationModel:
    """Inside ``budget_transaction``: the reservation's INSERT and the holds are recorded
    for the block's end (after the caller's own rows), so nothing here waits on the
    database. A duplicate reservation of the task fails the block (IntegrityError)."""
    row = ReservationModel(
        id=uuid.uuid4(),
        organization_id=request.organization_id,
        api_key_id=request.api_key_id,
        task_id=request.task_id,
        model=request.model,
        amount_usd=amount,
        input_usd_per_mtok=price.input_usd_per_mtok,
        output_usd_per_mtok=price.output_usd_per_mtok,
        org_budget_id=org.pk,
        key_budget_id=key.pk if key else None,
        status=ReservationModel.Status.HELD,
        created_at=timezone.now(),
    )
    values: list[object] = [row.id, row.organization_id, row.api_key_id, row.task_id, row.model, amount]
    values += [row.input_usd_per_mtok, row.output_usd_per_mtok, row.org_budget_id, row.key_budget_id, row.created_at]
    writes.defer(_RESERVATION_INSERT_DEFERRED, values)
    if before_hold is not None:
        before_hold(to_reservation(row))
    _hold(org, amount)
    if key is not None:
        _hold(key, amount)
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
