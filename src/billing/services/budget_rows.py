"""``budget_transaction``: a transaction whose budget-row writes run last, sent with its
COMMIT (docs/decisions/submit-path.md).

Every submit holds, and every finished task settles, against the organization's one
budget row; the UPDATE locks that row until COMMIT, and every other submit and settle of
the organization queues behind it. Issue 9's bench (64 clients, the pools busy) sampled
about seven backends waiting on that lock at any moment while its holder sat "idle in
transaction": its Python thread, short of CPU or of the GIL, had not sent COMMIT yet.

Inside ``budget_transaction`` the holds and unholds are recorded, not run. On leaving the
block they run after everything else; when the block is the outermost transaction they go
to PostgreSQL in one query string with the COMMIT, so the row stays locked for the
server's execution of those statements only, never across a client round trip. A hold
without room raises in the database (``billing_budget_hold``, SQLSTATE SYB01): the COMMIT
is skipped, the whole transaction rolls back, and the caller gets ``BudgetExceeded``.
Nested in another transaction (a chat turn submits inside its own), the statements run at
the end of the block and the lock lasts until the outer COMMIT, as before.

Hold and unhold both touch the organization's row before the key's, so no two writers
wait on each other's rows in opposite orders.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from decimal import Decimal
from typing import Any

from django.db import DatabaseError, connection, transaction

from billing.models import Budget

HOLD = "SELECT billing_budget_hold(%s, %s)"
UNHOLD = (
    f"UPDATE {Budget._meta.db_table} SET reserved_usd = reserved_usd - %s, spent_usd = spent_usd + %s, "  # noqa: S608
    "updated_at = STATEMENT_TIMESTAMP() WHERE id = %s"
)
REFUSED = "SYB01"  # raised by billing_budget_hold (migration 0004)

_Statement = tuple[str, list[Any]]
_pending: ContextVar[list[_Statement] | None] = ContextVar("billing_budget_rows", default=None)


class HoldRefused(Exception):
    """A deferred hold found no room (the transaction was rolled back)."""

    def __init__(self, budget_id: int, amount: Decimal) -> None:
        super().__init__(budget_id, amount)
        self.budget_id = budget_id
        self.amount = amount


def defer(sql: str, params: list[Any]) -> bool:
    """Record a budget-row statement for the end of the current ``budget_transaction``;
    False (nothing recorded) outside one."""
    pending = _pending.get()
    if pending is None:
        return False
    pending.append((sql, params))
    return True


@contextmanager
def budget_transaction() -> Iterator[None]:
    """``transaction.atomic()`` whose budget-row writes run last (with the COMMIT when it
    is the outermost). Raises ``HoldRefused`` after rolling back when a hold had no room
    (``billing.services.budget_transaction`` turns it into ``BudgetExceeded``)."""
    outermost = not connection.in_atomic_block
    pending: list[_Statement] = []
    token = _pending.set(pending)
    try:
        with transaction.atomic():
            try:
                yield
            finally:
                _pending.reset(token)
            _flush(pending, commit=outermost)
    except DatabaseError as exc:
        refused = _refused(exc, pending)
        if refused is None:
            raise
        raise refused from None


def _flush(statements: list[_Statement], *, commit: bool) -> None:
    if not statements:
        return
    with connection.cursor() as cursor:
        if connection.settings_dict["OPTIONS"].get("server_side_binding"):
            # Server-side binding takes one statement per query: no COMMIT rides along, and
            # the rows stay locked until Django's COMMIT, one round trip later.
            for statement, values in statements:
                cursor.execute(statement, values)
            return
        sql = "; ".join(statement for statement, _ in statements)
        params = [param for _, values in statements for param in values]
        # One simple-protocol query (the client-side binding cursor Django uses with
        # psycopg): PostgreSQL runs the statements and the COMMIT back to back. Django's own
        # COMMIT when the atomic block ends finds the transaction closed and sends nothing.
        cursor.execute(f"{sql}; COMMIT" if commit else sql, params)


def _refused(exc: DatabaseError, statements: list[_Statement]) -> HoldRefused | None:
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) != REFUSED:
        return None
    budget_id = int(cause.diag.message_detail or 0)  # type: ignore[union-attr]
    amounts = [values[1] for sql, values in statements if sql == HOLD and values[0] == budget_id]
    return HoldRefused(budget_id, Decimal(str(amounts[0])) if amounts else Decimal(0))
