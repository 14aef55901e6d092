"""The submit path's shape (issue 9): the budget row lock is held as briefly as it can be,
and the guarantees that shape could endanger still hold (no overshoot under racing
submits, dispatch only after commit)."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing import services as billing
from billing.models import Reservation
from llm.models import AITask
from llm.services import dispatch as gate

PROMPT = "Explain queues to a five year old."


def submit(tenant):
    return tenant.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT, "cache": False}, format="json")


def submit_statements(tenant) -> list[str]:
    submit(tenant)  # the month's budget rows exist from here on, as in steady state
    gate.pool_register(queue="default", node="test-submit-path", slots=4, ttl_s=60)  # so the gate counts
    try:
        with CaptureQueriesContext(connection) as queries:
            assert submit(tenant).status_code == 202
    finally:
        gate.pool_unregister(queue="default", node="test-submit-path")
    return [q["sql"] for q in queries.captured_queries]


@pytest.mark.django_db(transaction=True)
def test_the_submits_writes_are_one_transaction_in_one_round_trip(tenant) -> None:
    """Every submit of an organization waits on its budget row from the hold to COMMIT;
    issue 9's bench found that wait dominating while the holder's thread had not sent
    COMMIT yet. So the reservation, the task and the hold go to PostgreSQL as one query
    string, BEGIN to COMMIT, the hold last: the row is never locked across a round trip."""
    statements = submit_statements(tenant)
    writes = [i for i, sql in enumerate(statements) if "billing_budget_hold" in sql]
    assert len(writes) == 1, statements
    sql = statements[writes[0]]
    assert sql.startswith('BEGIN; INSERT INTO "billing_reservation"'), sql
    assert 'INSERT INTO "llm_aitask"' in sql
    assert sql.index('INSERT INTO "llm_aitask"') < sql.index("billing_budget_hold") < sql.index("; COMMIT")
    assert sql.endswith("; COMMIT"), sql
    assert statements[writes[0] + 1 :] == [], statements
    before = statements[: writes[0]]
    assert not any(sql.startswith(("INSERT", "UPDATE", "SAVEPOINT", "BEGIN")) for sql in before), [
        s[:40] for s in before
    ]
    assert any("EXISTS (SELECT 1 FROM llm_aitask" in sql for sql in before)  # the dispatch gate


@pytest.mark.django_db
def test_inside_an_outer_transaction_the_writes_still_go_together_without_committing(tenant) -> None:
    """A submit nested in a transaction (a chat turn's; here the test's own) cannot commit:
    its writes still go together, the hold last, and the outer transaction commits them."""
    statements = submit_statements(tenant)
    writes = [i for i, sql in enumerate(statements) if "billing_budget_hold" in sql]
    assert len(writes) == 1, statements
    sql = statements[writes[0]]
    assert sql.startswith('INSERT INTO "billing_reservation"') and "COMMIT" not in sql and "BEGIN" not in sql
    after = statements[writes[0] + 1 :]
    assert after == [] or (len(after) == 1 and after[0].startswith("RELEASE SAVEPOINT")), after


@pytest.mark.django_db
def test_a_refused_hold_creates_nothing_and_releases_nothing(tenant) -> None:
    """The reservation row is now inserted before the hold: a refusal must undo it."""
    org_id = uuid.UUID(tenant.organization_id)
    assert submit(tenant).status_code == 202
    status = billing.budget_status(organization_id=org_id)
    billing.budget_set(organization_id=org_id, limit_usd=status.reserved_usd)  # nothing left
    response = submit(tenant)
    assert response.status_code == 402
    assert AITask.objects.count() == 1
    assert Reservation.objects.filter(organization_id=org_id).count() == 1
    assert billing.budget_status(organization_id=org_id).reserved_usd == status.reserved_usd


@pytest.mark.django_db(transaction=True)
def test_racing_submits_never_overshoot_the_budget(make_tenant, broker) -> None:
    """20 submits at once through the whole HTTP path against a budget with room for 4:
    exactly 4 are accepted, every other one is 402, and nothing is held beyond the limit."""
    tenant = make_tenant()
    org_id = uuid.UUID(tenant.organization_id)
    assert submit(tenant).status_code == 202
    amount = Reservation.objects.get(organization_id=org_id).amount_usd
    billing.budget_set(organization_id=org_id, limit_usd=amount * 5)  # one held, four to go
    barrier = threading.Barrier(20)
    codes: list[int] = []

    def run() -> None:
        try:
            barrier.wait()
            codes.append(submit(tenant).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(codes) == [202] * 4 + [402] * 16
    status = billing.budget_status(organization_id=org_id)
    assert status.reserved_usd == amount * 5
    assert status.remaining_usd == Decimal(0)
    assert AITask.objects.filter(organization_id=org_id).count() == 5
    assert Reservation.objects.filter(organization_id=org_id, status="held").count() == 5
