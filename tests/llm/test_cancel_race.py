"""Cancel against the lease holder's completion (SPEC §5): whoever wins PostgreSQL's row
lock, the task ends in one state and the answer the provider produced is charged once.
The cancel of a running task charges what was produced, by design (see
``llm.services.execution._charge_cancelled``)."""

from __future__ import annotations

import threading
import uuid
from decimal import Decimal

import pytest
from django.db import connection

from llm import services
from llm.models import AITask
from llm.services.execution import _complete
from tests.llm.test_execution import budget, submit

pytestmark = pytest.mark.django_db


def _claim_for_test(task_id: str) -> AITask:
    from llm.services.execution import _claim

    task = _claim(uuid.UUID(task_id))
    assert task is not None
    return task


def _completion(input_tokens: int = 1000, output_tokens: int = 2000):
    from llm.providers import Completion

    return Completion(
        text="the whole answer",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        model="fake-small",
        finish_reason="stop",
    )


def test_cancel_before_the_lease_holder_completes_charges_what_was_produced(tenant) -> None:
    """Cancel wins the race: the holder's completion finds the row cancelled, with its own
    lease token, and charges the answer the provider produced (once); the task stays
    cancelled and the reservation is closed."""
    task_id = submit(tenant)
    task = _claim_for_test(task_id)
    services.task_cancel(organization_id=uuid.UUID(tenant.organization_id), task_id=uuid.UUID(task_id))
    assert budget(tenant).reserved_usd > 0  # held for the running attempt to settle
    assert _complete(task, _completion()).kind == "cancelled"
    row = AITask.objects.get(id=task_id)
    expected = Decimal("0.0005") + Decimal("0.003")  # 1000 in, 2000 out at fake-small prices
    assert row.status == "cancelled" and row.cost_usd == expected and row.lease_token is None
    assert budget(tenant).spent_usd == expected and budget(tenant).reserved_usd == 0
    # A second settlement (a duplicate) charges nothing more.
    assert _complete(task, _completion()).kind == "discarded"
    assert budget(tenant).spent_usd == expected


def test_completion_before_the_cancel_wins_and_the_cancel_is_refused(tenant) -> None:
    task_id = submit(tenant)
    task = _claim_for_test(task_id)
    assert _complete(task, _completion()).kind == "done"
    with pytest.raises(services.TaskNotCancellable):
        services.task_cancel(organization_id=uuid.UUID(tenant.organization_id), task_id=uuid.UUID(task_id))
    row = AITask.objects.get(id=task_id)
    assert row.status == "done" and budget(tenant).spent_usd == row.cost_usd > 0


@pytest.mark.django_db(transaction=True)
def test_a_real_race_of_completion_and_cancel_settles_once_whichever_wins(tenant) -> None:
    """The lease holder's completion and a client's cancel, started together on two
    threads (each with its own connection), many times. Whichever order PostgreSQL's row
    lock gives them: the answer is charged exactly once, the reservation is closed, and
    the final state agrees with who won (a refused cancel means ``done``; an accepted one
    means ``cancelled`` and a completion that reports it)."""
    org = uuid.UUID(tenant.organization_id)
    expected = Decimal("0.0005") + Decimal("0.003")
    seen: set[str] = set()
    for n in range(8):
        task = _claim_for_test(submit(tenant, prompt=f"Race number {n}", cache=False))
        barrier = threading.Barrier(2)
        results: dict[str, str] = {}

        def complete(task: AITask = task, barrier: threading.Barrier = barrier, results: dict = results) -> None:
            barrier.wait()
            try:
                results["complete"] = _complete(task, _completion()).kind
            finally:
                connection.close()

        def cancel(task: AITask = task, barrier: threading.Barrier = barrier, results: dict = results) -> None:
            barrier.wait()
            try:
                services.task_cancel(organization_id=org, task_id=task.id)
                results["cancel"] = "accepted"
            except services.TaskNotCancellable:
                results["cancel"] = "refused"
            finally:
                connection.close()

        threads = [threading.Thread(target=complete), threading.Thread(target=cancel)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        row = AITask.objects.get(id=task.id)
        if results["cancel"] == "refused":
            assert (results["complete"], row.status) == ("done", "done")
        else:
            assert (results["complete"], row.status) == ("cancelled", "cancelled")
        assert row.cost_usd == expected and row.lease_token is None
        seen.add(row.status)
    status = budget(tenant)
    assert status.spent_usd == expected * 8 and status.reserved_usd == 0, seen


def test_a_reclaimed_lease_holder_charges_nothing(tenant) -> None:
    """A worker that lost its lease (another took the task over) neither completes nor
    charges, even if the task was cancelled meanwhile."""
    task_id = submit(tenant)
    task = _claim_for_test(task_id)
    AITask.objects.filter(id=task_id).update(lease_token=uuid.uuid4())  # taken over
    services.task_cancel(organization_id=uuid.UUID(tenant.organization_id), task_id=uuid.UUID(task_id))
    assert _complete(task, _completion()).kind == "discarded"
    assert budget(tenant).spent_usd == 0


def test_cancel_of_a_pending_task_releases_its_reservation_at_once(tenant) -> None:
    task_id = submit(tenant)
    services.task_cancel(organization_id=uuid.UUID(tenant.organization_id), task_id=uuid.UUID(task_id))
    assert budget(tenant).reserved_usd == 0 and budget(tenant).spent_usd == 0
