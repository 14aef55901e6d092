"""The worker's keeper (llm.services.runtime) against real PostgreSQL and Redis: leases
renewed on the database clock, aborts on cancel and at the soft deadline, a call past its
hard deadline failed for the thread that is stuck in it."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from llm import services, streams
from llm.models import AITask
from llm.providers.base import CallAborted, CallGuard, guarded
from llm.providers.fake import FakeProvider
from llm.services.execution import _claim
from llm.services.runtime import Runtime

pytestmark = pytest.mark.django_db(transaction=True)


def claimed(tenant) -> AITask:
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "A long journey north."}, format="json")
    task = _claim(uuid.UUID(response.json()["id"]))
    assert task is not None and task.lease_token is not None
    return task


def track(keeper: Runtime, task: AITask, **deadlines: float) -> tuple[CallGuard, object]:
    guard = CallGuard()
    assert task.lease_token is not None
    call = keeper.track(task_id=task.id, lease_token=task.lease_token, queue="default", guard=guard)
    for name, value in deadlines.items():
        setattr(call, name, value)
    return guard, call


def test_heartbeat_renews_every_lease_in_flight_on_the_database_clock(tenant, settings) -> None:
    keeper = Runtime(autostart=False)
    tasks = [claimed(tenant) for _ in range(3)]
    AITask.objects.filter(id__in=[t.id for t in tasks]).update(lease_expires_at=timezone.now() + timedelta(seconds=1))
    guards = [track(keeper, task)[0] for task in tasks]
    keeper._renew_leases()
    for task in AITask.objects.filter(id__in=[t.id for t in tasks]):
        assert task.lease_expires_at is not None
        assert task.lease_expires_at > timezone.now() + timedelta(seconds=settings.TASK_LEASE_SECONDS - 2)
    assert not any(guard.aborted for guard in guards)


def test_a_cancelled_or_reclaimed_row_aborts_its_call_at_the_heartbeat(make_tenant) -> None:
    keeper = Runtime(autostart=False)
    tenant = make_tenant()
    cancelled, reclaimed = claimed(tenant), claimed(tenant)
    cancel_guard, _ = track(keeper, cancelled)
    lost_guard, _ = track(keeper, reclaimed)
    services.task_cancel(organization_id=cancelled.organization_id, task_id=cancelled.id)
    streams.get_redis_connection("default").delete(streams.cancel_key(cancelled.id))  # Redis lost the flag
    AITask.objects.filter(id=reclaimed.id).update(lease_token=uuid.uuid4())
    keeper._renew_leases()
    assert (cancel_guard.reason, lost_guard.reason) == ("cancelled", "lease_lost")


def test_the_cancel_flag_stops_a_sleeping_call_within_the_poll_interval(tenant) -> None:
    """A call sleeping in the fake provider (a network wait) returns as soon as the keeper
    sees the cancel flag: the thread, and its slot, are free again."""
    keeper = Runtime(autostart=False)
    task = claimed(tenant)
    guard, _call = track(keeper, task)
    outcome: list[str] = []

    def call_provider() -> None:
        with guarded(guard):
            try:
                FakeProvider(latency_ms=60_000)._pause(60)
            except CallAborted as exc:
                outcome.append(exc.reason)

    thread = threading.Thread(target=call_provider)
    thread.start()
    started = time.monotonic()
    streams.mark_cancelled(task.id)
    while thread.is_alive() and time.monotonic() - started < 5:
        keeper._poll_cancels()  # what the keeper thread does every 0.5 s
        thread.join(timeout=0.5)
    assert outcome == ["cancelled"] and time.monotonic() - started < 2


def test_the_soft_deadline_aborts_with_timeout(tenant) -> None:
    keeper = Runtime(autostart=False)
    guard, _ = track(keeper, claimed(tenant), soft_deadline=time.monotonic() - 1)
    keeper._enforce_deadlines(time.monotonic())
    assert guard.reason == "timeout"


def test_a_call_past_its_hard_deadline_is_failed_for_its_stuck_thread(tenant) -> None:
    keeper = Runtime(autostart=False)
    task = claimed(tenant)
    _, _call = track(keeper, task, soft_deadline=time.monotonic() - 2, hard_deadline=time.monotonic() - 1)
    keeper._enforce_deadlines(time.monotonic())
    row = AITask.objects.get(id=task.id)
    assert row.status == "failed" and row.error_code == "timeout" and row.lease_token is None
    assert keeper.abandoned == 1 and keeper.in_flight() == 0
