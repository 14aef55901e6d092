"""The statements that write an organization's (or a key's) budget row, and how a hold's
refusal reads back from the database.

Every submit holds, and every finished task settles, against the organization's one
budget row; each UPDATE locks that row until COMMIT and every other submit and settle of
the organization queues behind it. So these statements run last in their transaction
and, inside ``billing.services.budget_transaction``, go to PostgreSQL with the COMMIT
(``kernel.writes``; docs/decisions/submit-path.md). Hold and unhold both touch the
organization's row before the key's, so no two writers wait on each other's rows in
opposite orders.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import DatabaseError

from billing.models import Budget

# The conditional UPDATE (limit >= spent + reserved + amount) as one statement that raises
# SQLSTATE SYB01 when the row has no room (migration 0004): a refusal aborts the
# transaction, so a hold can travel with the COMMIT in one query string.
HOLD = "SELECT billing_budget_hold(%s, %s)"
UNHOLD = (
    f"UPDATE {Budget._meta.db_table} SET reserved_usd = reserved_usd - %s, spent_usd = spent_usd + %s, "  # noqa: S608
    "updated_at = STATEMENT_TIMESTAMP() WHERE id = %s"
)
REFUSED = "SYB01"  # billing_budget_hold's refusal; DETAIL '<budget id>:<amount>'


def refused(exc: DatabaseError) -> tuple[int, Decimal] | None:
    """(budget id, amount) when ``exc`` is ``billing_budget_hold`` refusing a hold."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) != REFUSED:
        return None
    detail = getattr(getattr(cause, "diag", None), "message_detail", None) or "0:0"
    budget_id, _, amount = detail.partition(":")
    return int(budget_id), Decimal(amount or 0)
