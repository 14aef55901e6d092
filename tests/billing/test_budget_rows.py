"""billing.budget_transaction: budget-row writes run last and, in the outermost
transaction, travel with the COMMIT, so a budget row is never locked across a client
round trip; a hold without room rolls everything back (issue 9)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from uuid import UUID

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from billing import money
from billing import services as billing
from billing.models import Budget, Reservation
from billing.services import budget_rows
from kernel import writes
from tests.billing.helpers import ESTIMATE, reserve, settle
from tests.billing.test_budgets import _race
from users import services as users

pytestmark = pytest.mark.django_db(transaction=True)


def org_with_limit(limit: Decimal) -> UUID:
    org_id = users.organization_get_or_create(name=f"Rows {uuid.uuid4().hex[:8]}").id
    billing.budget_set(organization_id=org_id, limit_usd=limit)
    return org_id


def reserve_in_transaction(org_id: UUID, **kwargs: object):
    with billing.budget_transaction():
        return reserve(org_id, **kwargs)  # type: ignore[arg-type]


def budget_row(org_id: UUID) -> int:
    return Budget.objects.get(organization_id=org_id, api_key_id__isnull=True).pk


def update_from_elsewhere(budget_id: int) -> str:
    """Touch the budget row from another connection that gives up after 300 ms of waiting
    for its lock: "free" or "locked"."""
    name = str(settings.DATABASES["default"]["NAME"])
    with psycopg.connect(dbname=name, autocommit=True) as other:
        other.execute("SET lock_timeout = '300ms'")
        try:
            other.execute("UPDATE billing_budget SET updated_at = now() WHERE id = %s", [budget_id])
        except psycopg.errors.LockNotAvailable:
            return "locked"
    return "free"


def test_the_hold_waits_for_the_end_of_the_block_and_goes_with_the_commit() -> None:
    org_id = org_with_limit(ESTIMATE * 10)
    budget_id = budget_row(org_id)
    seen: dict[str, object] = {}
    with billing.budget_transaction():
        reservation = reserve(org_id)
        # The hold is recorded, not run: the row is free while the block still works.
        seen["during"] = update_from_elsewhere(budget_id)
    assert seen["during"] == "free"
    assert billing.budget_status(organization_id=org_id).reserved_usd == ESTIMATE
    assert Reservation.objects.get(id=reservation.id).status == "held"


def test_the_flush_commits_in_the_same_query_string() -> None:
    """After the flush the server reports no open transaction, though Django's atomic block
    has not ended: the COMMIT went with the statements, and Django's own is skipped."""
    org_id = org_with_limit(ESTIMATE * 10)
    statuses = []
    with transaction.atomic():
        reserve(org_id)  # outside budget_transaction: held at once, in this transaction
        writes._run([(budget_rows.HOLD, [budget_row(org_id), ESTIMATE])], begin=False, commit=True)
        statuses.append(connection.connection.info.transaction_status)
    assert statuses == [psycopg.pq.TransactionStatus.IDLE]
    assert billing.budget_status(organization_id=org_id).reserved_usd == ESTIMATE * 2


def test_a_refused_hold_rolls_back_everything_in_the_block() -> None:
    org_id = org_with_limit(ESTIMATE * 2)
    reserve_in_transaction(org_id)
    marker = uuid.uuid4()

    def two_in_one_block() -> None:
        with billing.budget_transaction():
            reserve(org_id, task_id=marker)
            reserve(org_id)  # no room for this one

    with pytest.raises(billing.BudgetExceeded) as refused:
        two_in_one_block()
    # The message names what was left once the block had rolled back: the first reservation's.
    assert f"has {money.as_string(ESTIMATE)} USD left" in str(refused.value.detail)
    assert not Reservation.objects.filter(task_id=marker).exists()  # the first one went too
    status = billing.budget_status(organization_id=org_id)
    assert status.reserved_usd == ESTIMATE
    assert reserve_in_transaction(org_id).status == "held"  # the connection is usable again


def test_a_key_budget_refusal_undoes_the_organizations_hold() -> None:
    issued = users.api_key_create(email=f"rows-{uuid.uuid4().hex[:6]}@keys.test", organization_name="Rows Keys")
    org_id, key_id = issued.info.organization_id, issued.info.id
    billing.budget_set(organization_id=org_id, api_key_id=key_id, limit_usd=ESTIMATE)
    reserve_in_transaction(org_id, api_key_id=key_id)
    before = billing.budget_status(organization_id=org_id).reserved_usd
    with pytest.raises(billing.BudgetExceeded, match="this API key's"):
        reserve_in_transaction(org_id, api_key_id=key_id)
    assert billing.budget_status(organization_id=org_id).reserved_usd == before


def test_settlements_run_last_too() -> None:
    org_id = org_with_limit(ESTIMATE * 10)
    reservation = reserve_in_transaction(org_id)
    budget_id = budget_row(org_id)
    seen: dict[str, object] = {}
    with billing.budget_transaction():
        settle(reservation)
        seen["during"] = update_from_elsewhere(budget_id)
    assert seen["during"] == "free"
    status = billing.budget_status(organization_id=org_id)
    assert status.reserved_usd == 0 and status.spent_usd == Decimal("0.0011")


def test_racing_reservations_never_overshoot_through_the_commit_path() -> None:
    org_id = org_with_limit(ESTIMATE * 10)
    results = _race(40, lambda: reserve_in_transaction(org_id))
    assert sum(not isinstance(r, Exception) for r in results) == 10, results
    assert all(isinstance(r, billing.BudgetExceeded) for r in results if isinstance(r, Exception))
    status = billing.budget_status(organization_id=org_id)
    assert status.reserved_usd == ESTIMATE * 10 and status.remaining_usd == 0
    assert Reservation.objects.filter(organization_id=org_id, status="held").count() == 10


def test_another_database_error_is_not_a_refusal() -> None:
    from django.db import DatabaseError

    org_id = org_with_limit(ESTIMATE * 10)

    def failing_block() -> None:
        with billing.budget_transaction():
            reserve(org_id)
            writes.defer("SELECT 1 / 0", [])

    with pytest.raises(DatabaseError) as failed:
        failing_block()
    assert not isinstance(failed.value, billing.BudgetExceeded)
    assert billing.budget_status(organization_id=org_id).reserved_usd == 0  # rolled back
    assert reserve_in_transaction(org_id).status == "held"  # and the connection is usable


def test_with_server_side_binding_the_statements_run_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deployment with OPTIONS["server_side_binding"] cannot send several statements in
    one query: the holds run one by one and Django's COMMIT follows."""
    org_id = org_with_limit(ESTIMATE * 2)
    monkeypatch.setitem(connection.settings_dict["OPTIONS"], "server_side_binding", True)
    with CaptureQueriesContext(connection) as queries:
        reserve_in_transaction(org_id)
    holds = [q["sql"] for q in queries.captured_queries if "billing_budget_hold" in q["sql"]]
    assert len(holds) == 1 and "COMMIT" not in holds[0]
    assert billing.budget_status(organization_id=org_id).reserved_usd == ESTIMATE
    reserve_in_transaction(org_id)
    with pytest.raises(billing.BudgetExceeded):
        reserve_in_transaction(org_id)
    assert billing.budget_status(organization_id=org_id).reserved_usd == ESTIMATE * 2


def test_releases_run_last_too() -> None:
    org_id = org_with_limit(ESTIMATE * 10)
    reservation = reserve_in_transaction(org_id)
    seen: dict[str, object] = {}
    with billing.budget_transaction():
        assert billing.reservation_release(reservation_id=reservation.id) is True
        seen["during"] = update_from_elsewhere(budget_row(org_id))
    assert seen["during"] == "free"
    assert billing.budget_status(organization_id=org_id).reserved_usd == 0
    assert Reservation.objects.get(id=reservation.id).status == "released"
