"""Idempotency is atomic with the task (issue 8, defect 6): the key record, the task
with its budget reservation and the stored answer commit together or not at all.

These tests commit (``transactional_db``): concurrent requests run on their own
threads and database connections, and crashes are real processes dying.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import Reservation
from contracts.llm import TaskSubmission
from kernel import services
from kernel.models import IdempotencyRecord
from llm import services as llm
from llm.models import AITask
from tests.kernel.crash_submit import CRASHED
from tests.support import ROOT, server_env

pytestmark = pytest.mark.django_db(transaction=True)
PROMPT = "Explain idempotency to a five year old."
URL = "/api/v1/ai-tasks/"


def post(tenant: Any, key: str, prompt: str = PROMPT) -> Any:
    return tenant.client.post(URL, {"prompt": prompt}, format="json", HTTP_IDEMPOTENCY_KEY=key)


def crash_submit(tenant: Any, point: str, key: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.kernel.crash_submit", point, tenant.issued.key, key, PROMPT],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == CRASHED, result.stderr.decode()[-3000:]


def test_fifty_concurrent_requests_with_one_key_make_one_task(tenant: Any) -> None:
    barrier = threading.Barrier(50)
    results: list[tuple[int, str | None, str | None]] = []
    lock = threading.Lock()

    def request() -> None:
        client = APIClient()  # one client and one database connection per thread
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.issued.key}")
        try:
            barrier.wait(timeout=30)
            response = client.post(URL, {"prompt": PROMPT}, format="json", HTTP_IDEMPOTENCY_KEY="fifty")
            body = response.json()
            outcome = (response.status_code, body.get("id") or body.get("code"), response.get("Idempotent-Replayed"))
        finally:
            connection.close()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=request) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(results) == 50
    statuses = Counter(status for status, _, _ in results)
    assert set(statuses) <= {202, 409}, statuses
    assert {code for status, code, _ in results if status == 409} <= {"idempotency_in_flight"}
    accepted = [(task_id, replayed) for status, task_id, replayed in results if status == 202]
    assert [replayed for _, replayed in accepted].count("false") == 1  # one ran, the others replayed
    task = AITask.objects.get()
    assert {task_id for task_id, _ in accepted} == {str(task.id)}
    assert Reservation.objects.filter(task_id=task.id).count() == Reservation.objects.count() == 1
    again = post(tenant, "fifty")  # and once everyone is done, the key replays
    assert again.status_code == 202 and again.json()["id"] == str(task.id)
    assert again["Idempotent-Replayed"] == "true"


def test_a_request_in_flight_on_another_connection_is_409_then_replays(tenant: Any) -> None:
    inside, release = threading.Event(), threading.Event()
    first: list[services.StoredResponse] = []

    def slow_first() -> None:
        def operation() -> tuple[int, Any, dict[str, str]]:
            inside.set()
            assert release.wait(timeout=30)
            return 202, {"id": "first"}, {}

        try:
            first.append(
                services.idempotent_execute(
                    scope=tenant.organization_id, key="busy", fingerprint="f", operation=operation
                )
            )
        finally:
            connection.close()

    thread = threading.Thread(target=slow_first)
    thread.start()
    assert inside.wait(timeout=30)
    for fingerprint in ("f", "g"):  # another body too: nothing about the first is known yet
        with pytest.raises(services.IdempotencyInFlight):
            services.idempotent_execute(
                scope=tenant.organization_id, key="busy", fingerprint=fingerprint, operation=lambda: (1, 1, {})
            )
    release.set()
    thread.join(timeout=30)
    assert first and not first[0].replayed
    replay = services.idempotent_execute(
        scope=tenant.organization_id, key="busy", fingerprint="f", operation=lambda: (1, 1, {})
    )
    assert replay.replayed and replay.body == {"id": "first"}


def test_crash_after_the_task_is_inserted_never_makes_a_second_task(tenant: Any) -> None:
    crash_submit(tenant, "after-task", "crash-1")
    # Whatever the crash left, wait out the in-flight takeover window, then retry.
    IdempotencyRecord.objects.update(updated_at=timezone.now() - services.IN_FLIGHT_TAKEOVER - timedelta(seconds=1))
    retry = post(tenant, "crash-1")
    assert retry.status_code == 202, retry.json()
    assert AITask.objects.count() == 1, "the crashed request's task survived and the retry made a second"
    assert Reservation.objects.count() == 1
    assert retry.json()["id"] == str(AITask.objects.get().id)


def test_crash_between_commit_and_response_replays_the_same_task(tenant: Any) -> None:
    crash_submit(tenant, "after-commit", "crash-2")
    task = AITask.objects.get()  # committed before the process died
    retry = post(tenant, "crash-2")
    assert retry.status_code == 202
    assert retry.json()["id"] == str(task.id) and retry["Idempotent-Replayed"] == "true"
    assert retry.json()["status"] == task.status
    assert AITask.objects.count() == 1 and Reservation.objects.count() == 1


def test_an_exception_after_the_task_is_inserted_leaves_no_record_and_no_task(tenant: Any) -> None:
    def operation() -> tuple[int, Any, dict[str, str]]:
        llm.task_submit(
            TaskSubmission(
                organization_id=tenant.issued.info.organization_id,
                api_key_id=tenant.issued.info.id,
                prompt=PROMPT,
                model="fake-small",
                use_cache=False,
            )
        )
        raise RuntimeError("the answer could not be built")

    with pytest.raises(RuntimeError):
        services.idempotent_execute(scope=tenant.organization_id, key="boom", fingerprint="f", operation=operation)
    assert not IdempotencyRecord.objects.exists()
    assert not AITask.objects.exists(), "the task committed although its request failed"
    assert not Reservation.objects.exists()
    retry = post(tenant, "boom")  # the key is free again
    assert retry.status_code == 202 and retry["Idempotent-Replayed"] == "false"


def test_the_outer_transaction_is_the_unit_when_one_is_open(tenant: Any) -> None:
    """Called inside a caller's transaction, nothing is visible until that commits and
    everything goes if it rolls back."""

    def caller() -> None:
        with transaction.atomic():
            services.idempotent_execute(
                scope=tenant.organization_id, key="outer", fingerprint="f", operation=lambda: (202, {}, {})
            )
            raise RuntimeError("the caller failed")

    with pytest.raises(RuntimeError):
        caller()
    assert not IdempotencyRecord.objects.exists()
