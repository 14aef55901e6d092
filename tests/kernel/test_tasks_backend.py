"""kernel.tasks_backend: Django's task API on the Celery pools, results in PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.conf import settings
from django.db import transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.utils import timezone

from config.celery import app
from kernel import tasks_backend
from kernel.models import TaskRecord
from tests.kernel import django_tasks

pytestmark = pytest.mark.django_db


def _make_due(result_id: str) -> None:
    """Skip the back-off (its length is the sweep's and Celery's business, not this test's)."""
    TaskRecord.objects.filter(id=result_id).update(run_after=timezone.now() - dt.timedelta(seconds=1))


def test_the_configured_backend_is_the_platform_one() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, tasks_backend.CeleryPoolBackend)
    assert backend.queues == {"priority", "default", "low"}


@pytest.mark.parametrize(
    ("queue_name", "priority", "expected"),
    [("default", 0, "default"), ("default", 80, "priority"), ("default", -50, "low"), ("low", 100, "low"),
     ("priority", -100, "priority")],
)  # fmt: skip
def test_priority_and_queue_name_pick_the_pool(queue_name: str, priority: int, expected: str) -> None:
    assert tasks_backend.celery_queue(django_tasks.add.using(queue_name=queue_name, priority=priority)) == expected


def test_an_unknown_queue_is_refused() -> None:
    with pytest.raises(InvalidTask, match="not valid"):
        django_tasks.add.using(queue_name="gpu")


def test_enqueue_sends_after_commit_and_a_rollback_sends_nothing(
    monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks: Any
) -> None:
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(app, "send_task", lambda name, args, queue, **_: sent.append((args[0], queue)))
    with transaction.atomic():
        django_tasks.add.enqueue(1, 2)
        transaction.set_rollback(True)
    assert sent == []
    assert not TaskRecord.objects.exists()

    with django_capture_on_commit_callbacks(execute=True):
        result = django_tasks.add.enqueue(1, 2)
        assert sent == []  # not before commit
    assert sent == [(result.id, "priority")]  # priority 80: the priority pool


def test_a_result_is_read_back_from_postgresql() -> None:
    result = django_tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    outcome = tasks_backend.execute(result.id, worker_id="w1")
    assert outcome.status == TaskResultStatus.SUCCESSFUL

    fetched = django_tasks.add.get_result(result.id)
    assert (fetched.status, fetched.return_value, fetched.worker_ids) == (TaskResultStatus.SUCCESSFUL, 5, ["w1"])
    assert fetched.args == [2, 3]
    assert fetched.started_at is not None and fetched.finished_at is not None
    result.refresh()
    assert result.return_value == 5
    # A duplicate message (redelivery, the sweeper) runs nothing twice.
    assert tasks_backend.execute(result.id, worker_id="w2").status == "skipped"


def test_unknown_ids_are_does_not_exist() -> None:
    for bad in ("not-a-uuid", "7b0c1b55-4a1b-4b43-8d5e-0b5f3a0e9d11"):
        with pytest.raises(TaskResultDoesNotExist):
            task_backends["default"].get_result(bad)


def test_failures_are_retried_up_to_max_attempts_then_failed() -> None:
    result = django_tasks.always_fails.enqueue()
    first = tasks_backend.execute(result.id, worker_id="w1")
    assert first.status == TaskResultStatus.READY and first.retry_in is not None
    assert 0 <= first.retry_in <= settings.TASK_RETRY_BACKOFF_S
    assert tasks_backend.execute(result.id, worker_id="w1").status == "skipped"  # back-off not over
    _make_due(result.id)
    assert tasks_backend.execute(result.id, worker_id="w2").status == TaskResultStatus.FAILED

    fetched = django_tasks.always_fails.get_result(result.id)
    assert fetched.status == TaskResultStatus.FAILED and fetched.attempts == 2
    assert [e.exception_class for e in fetched.errors] == [ValueError, ValueError]
    assert "never works" in fetched.errors[-1].traceback


def test_the_deadline_fails_a_call_on_a_threads_pool_without_retrying() -> None:
    result = django_tasks.sleeps.enqueue(3.0)
    assert tasks_backend.execute(result.id, worker_id="w1").status == TaskResultStatus.FAILED
    fetched = django_tasks.sleeps.get_result(result.id)
    assert fetched.attempts == 1  # max_attempts=3, but it may still be running: never twice
    assert fetched.errors[0].exception_class is tasks_backend.TaskDeadlineExceeded


def test_a_return_value_that_is_not_json_fails_without_retry() -> None:
    result = django_tasks.returns_a_set.enqueue()
    assert tasks_backend.execute(result.id, worker_id="w1").status == TaskResultStatus.FAILED
    assert django_tasks.returns_a_set.get_result(result.id).errors[0].exception_class is TypeError


def test_defaults_are_the_worker_policy_of_production_settings() -> None:
    """Without @task options a record gets the policy of settings (production defaults:
    5 attempts, 120 s), and its lease outlives the deadline so the sweeper never steals a
    live attempt."""
    result = django_tasks.add.enqueue(1, 1)
    record = TaskRecord.objects.get(id=result.id)
    assert (record.max_attempts, record.time_limit_s) == (settings.TASK_MAX_ATTEMPTS, settings.TASK_TIME_LIMIT)
    tasks_backend._claim(result.id, worker_id="w1")
    record.refresh_from_db()
    assert record.lease_until is not None and record.last_attempted_at is not None
    assert (record.lease_until - record.last_attempted_at).total_seconds() > settings.TASK_TIME_LIMIT
    with pytest.raises(InvalidTask, match="time_limit"):
        tasks_backend.platform_task(time_limit=settings.TASK_TIME_LIMIT + 1)(django_tasks.add.func)


def test_the_sweeper_resends_what_no_message_runs_and_a_lost_worker_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    monkeypatch.setattr(app, "send_task", lambda name, args, queue, **_: sent.append(args[0]))
    unsent = django_tasks.add.enqueue(1, 1)
    running = django_tasks.add.enqueue(2, 2)
    tasks_backend._claim(running.id, worker_id="dead-worker")
    sent.clear()
    assert tasks_backend.sweep() == 0  # fresh: within the grace, lease not expired

    past = timezone.now() - dt.timedelta(hours=1)
    TaskRecord.objects.filter(id=unsent.id).update(sent_at=past)
    TaskRecord.objects.filter(id=running.id).update(lease_until=past)
    assert tasks_backend.sweep() == 2
    assert sorted(sent) == sorted([unsent.id, running.id])
    assert tasks_backend.execute(running.id, worker_id="w2").status == TaskResultStatus.SUCCESSFUL
    fetched = django_tasks.add.get_result(running.id)
    assert fetched.worker_ids == ["dead-worker", "w2"]
    assert fetched.errors[0].exception_class is tasks_backend.WorkerLost


def test_finished_records_past_retention_are_cleaned_up_and_open_ones_kept() -> None:
    old_done, old_open, fresh = (django_tasks.add.enqueue(i, i) for i in range(3))
    tasks_backend.execute(old_done.id, worker_id="w")
    tasks_backend.execute(fresh.id, worker_id="w")
    past = timezone.now() - dt.timedelta(days=settings.TASK_RESULT_RETENTION_DAYS, hours=1)
    TaskRecord.objects.filter(id=old_done.id).update(finished_at=past)
    TaskRecord.objects.filter(id=old_open.id).update(enqueued_at=past)
    assert tasks_backend.cleanup() == 1
    with pytest.raises(TaskResultDoesNotExist):
        django_tasks.add.get_result(old_done.id)
    assert {str(i) for i in TaskRecord.objects.values_list("id", flat=True)} == {old_open.id, fresh.id}
