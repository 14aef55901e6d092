"""``budget_transaction``: a transaction whose budget-row writes run last, sent with its
COMMIT (kernel.writes; docs/decisions/submit-path.md).

Every submit holds, and every finished task settles, against the organization's one
budget row; the UPDATE locks that row until COMMIT, and every other submit and settle of
the organization queues behind it. Issue 9's bench (64 clients, the pools busy) sampled
about seven backends waiting on that lock at any moment while its holder sat "idle in
transaction". Inside ``budget_transaction`` the holds and settlements are deferred to the
end of the block (``kernel.writes.writes_last``) and go to PostgreSQL with the COMMIT: the
row stays locked for the server's execution of those statements only.

A hold without room raises in the database (``billing_budget_hold``, SQLSTATE SYB01): the
whole block rolls back and the caller gets ``HoldRefused`` (``BudgetExceeded`` from
``billing.services.budget_transaction``). Hold and unhold both touch the organization's
row before the key's, so no two writers wait on each other's rows in opposite orders.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal

from django.db import DatabaseError

from billing.models import Budget
from kernel import writes

HOLD = "SELECT billing_budget_hold(%s, %s)"
UNHOLD = (
    f"UPDATE {Budget._meta.db_table} SET reserved_usd = reserved_usd - %s, spent_usd = spent_usd + %s, "  # noqa: S608
    "updated_at = STATEMENT_TIMESTAMP() WHERE id = %s"
)
REFUSED = "SYB01"  # raised by billing_budget_hold (migration 0004), DETAIL '<budget id>:<amount>'


class HoldRefused(Exception):
    """A deferred hold found no room (the block was rolled back)."""

    def __init__(self, budget_id: int, amount: Decimal) -> None:
        super().__init__(budget_id, amount)
        self.budget_id = budget_id
        self.amount = amount


@contextmanager
def budget_transaction(*, atomic: bool = True) -> Iterator[None]:
    """``kernel.writes.writes_last(atomic=...)``; a refused hold raises ``HoldRefused``."""
    try:
        with writes.writes_last(atomic=atomic):
            yield
    except DatabaseError as exc:
        refused = _refused(exc)
        if refused is None:
            raise
        raise refused from None


def _refused(exc: DatabaseError) -> HoldRefused | None:
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) != REFUSED:
        return None
    detail = getattr(getattr(cause, "diag", None), "message_detail", None) or "0:0"
    budget_id, _, amount = detail.partition(":")
    return HoldRefused(int(budget_id), Decimal(amount or 0))
