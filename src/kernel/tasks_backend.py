"""A ``django.tasks`` backend on the platform's Celery pools (docs/decisions/django-tasks.md).

A product team writes ``@task`` functions (Django's API) and calls ``.enqueue()``; this
backend:

- writes a :class:`kernel.models.TaskRecord` in the caller's transaction and sends one
  Celery message (``kernel.run_django_task``, carrying only the record id) **after
  commit**: a rolled-back enqueue runs nothing;
- picks the Celery queue: ``queue_name`` ``priority`` or ``low`` names it; on
  ``default`` the Django priority does (>= 50 ``priority``, <= -50 ``low``);
- runs the function on a worker of that queue under the platform's worker policy:
  ``TASK_MAX_ATTEMPTS`` attempts with exponential, fully jittered back-off
  (``TASK_RETRY_BACKOFF_S`` .. ``TASK_RETRY_BACKOFF_MAX_S``) and a hard deadline of
  ``TASK_TIME_LIMIT`` seconds (``@task(max_attempts=..., time_limit=...)`` per task);
- keeps status, attempts, errors and the return value in PostgreSQL, read back with
  ``Task.get_result(id)`` from any process (no Celery result backend).

The pools are Celery ``threads`` pools, where Celery's own time limits do not apply, so
the function runs on a thread of its own that the pool thread waits for until the
deadline. A function still running then is recorded ``FAILED``
(:class:`TaskDeadlineExceeded`, never retried: it may still be running) and its thread is
abandoned: Python cannot stop a thread. Past ``WORKER_MAX_ABANDONED_CALLS`` abandoned
threads the worker process exits for its supervisor to restart it, as it does for AI calls.
"""

from __future__ import annotations

import contextvars
import os
import random
import threading
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import structlog
from celery import current_app
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connections, transaction
from django.db.models import Q
from django.tasks import task as django_task
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import Task, TaskContext, TaskError, TaskResult, TaskResultStatus
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from kernel.models import TaskRecord

log = structlog.get_logger(__name__)

RUN_TASK = "kernel.run_django_task"
QUEUES = ("priority", "default", "low")
PRIORITY_QUEUE_AT = 50  # priority >= this on queue "default" runs on the priority pool
LOW_QUEUE_AT = -50  # priority <= this on queue "default" runs on the low pool
EXIT_STATUS_ABANDONED = 70  # EX_SOFTWARE, as llm.services.runtime
_random = random.SystemRandom()
_P = ParamSpec("_P")
_R = TypeVar("_R")


class TaskDeadlineExceeded(Exception):
    """The function was still running at its time limit; its thread was abandoned."""


class WorkerLost(Exception):
    """The worker running an attempt disappeared (its lease expired)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformTask(Task):
    """Django's Task with the platform's two knobs: ``@task(max_attempts=1)`` for a
    function that must never run twice, ``@task(time_limit=30.0)`` for a shorter deadline."""

    max_attempts: int | None = None  # None: settings.TASK_MAX_ATTEMPTS
    time_limit: float | None = None  # seconds; None: settings.TASK_TIME_LIMIT


def platform_task(
    *,
    priority: int = 0,
    queue_name: str = "default",
    takes_context: bool = False,
    max_attempts: int | None = None,
    time_limit: float | None = None,
) -> Callable[[Callable[_P, _R]], Task[_P, _R]]:
    """``django.tasks.task`` with the platform's knobs, typed (django-stubs' ``task`` does
    not know them). Plain ``@task(...)`` works too when the defaults suit."""
    return django_task(  # type: ignore[call-overload]
        priority=priority,
        queue_name=queue_name,
        takes_context=takes_context,
        max_attempts=max_attempts,
        time_limit=time_limit,
    )


def celery_queue(task: Task[Any, Any]) -> str:
    if task.queue_name != "default":
        return task.queue_name
    if task.priority >= PRIORITY_QUEUE_AT:
        return "priority"
    if task.priority <= LOW_QUEUE_AT:
        return "low"
    return "default"


class CeleryPoolBackend(BaseTaskBackend):
    task_class = PlatformTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        if "QUEUES" not in params:
            self.queues = set(QUEUES)

    def validate_task(self, task: Task) -> None:
        super().validate_task(task)
        if task.queue_name not in QUEUES:
            raise InvalidTask(f"queue_name must be one of {', '.join(QUEUES)} (got {task.queue_name!r}).")
        max_attempts = getattr(task, "max_attempts", None)
        if max_attempts is not None and (int(max_attempts) != max_attempts or not 1 <= max_attempts <= 100):
            raise InvalidTask("max_attempts must be a whole number between 1 and 100.")
        time_limit = getattr(task, "time_limit", None)
        if time_limit is not None and not 0 < time_limit <= settings.TASK_TIME_LIMIT:
            raise InvalidTask(f"time_limit must be above 0 and at most TASK_TIME_LIMIT ({settings.TASK_TIME_LIMIT} s).")

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        now = timezone.now()
        record = TaskRecord.objects.create(
            id=uuid.uuid4(),
            task_path=task.module_path,
            backend=self.alias,
            queue_name=task.queue_name,
            celery_queue=celery_queue(task),
            priority=task.priority,
            args=normalize_json(list(args)),
            kwargs=normalize_json(dict(kwargs)),
            max_attempts=getattr(task, "max_attempts", None) or settings.TASK_MAX_ATTEMPTS,
            time_limit_s=getattr(task, "time_limit", None) or float(settings.TASK_TIME_LIMIT),
            run_after=task.run_after,
            enqueued_at=now,
            sent_at=now,
        )
        result = _to_result(record, task)
        record_id, queue, eta = str(record.id), record.celery_queue, task.run_after
        transaction.on_commit(lambda: send(record_id, queue=queue, eta=eta))
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        try:
            record = TaskRecord.objects.get(id=result_id)
        except (TaskRecord.DoesNotExist, ValidationError, ValueError) as exc:
            raise TaskResultDoesNotExist(result_id) from exc
        return _to_result(record)


def send(record_id: str, *, queue: str, eta: datetime | None = None, countdown: float | None = None) -> bool:
    """Publish the message that runs ``record_id``; on a broker error log and return False
    (the record stays ``READY`` and ``sweep`` sends it again)."""
    try:
        current_app.send_task(RUN_TASK, args=[record_id], queue=queue, eta=eta, countdown=countdown)
    except Exception:
        log.warning("django_task_send_failed", record_id=record_id, queue=queue, exc_info=True)
        return False
    return True


def _to_result(record: TaskRecord, task: Task | None = None) -> TaskResult:
    if task is None:
        try:
            task = import_string(record.task_path)
        except ImportError as exc:
            raise TaskResultDoesNotExist(f"{record.id}: {record.task_path} is not importable") from exc
        if not isinstance(task, Task):
            raise TaskResultDoesNotExist(f"{record.id}: {record.task_path} is not a task")
        task = task.using(
            priority=record.priority, queue_name=record.queue_name, run_after=record.run_after, backend=record.backend
        )
    result: TaskResult[Any, Any] = TaskResult(
        task=task,
        id=str(record.id),
        status=TaskResultStatus(record.status),
        enqueued_at=record.enqueued_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        last_attempted_at=record.last_attempted_at,
        args=record.args,
        kwargs=record.kwargs,
        backend=record.backend,
        errors=[TaskError(**error) for error in record.errors],
        worker_ids=list(record.worker_ids),
    )
    object.__setattr__(result, "_return_value", record.return_value)
    return result


# -- on the worker ----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: str  # "skipped", SUCCESSFUL, FAILED or READY (a retry is due)
    retry_in: float | None = None
    queue: str = "default"


_abandoned = 0
_abandoned_lock = threading.Lock()


def execute(record_id: str, *, worker_id: str, exit_on_abandon: bool = False) -> Outcome:
    """Claim ``record_id`` and run its function once (the body of ``kernel.run_django_task``).

    A duplicate message (broker redelivery, the sweeper) finds the record not claimable
    and is skipped: one attempt runs at a time.
    """
    claimed = _claim(record_id, worker_id=worker_id)
    if claimed is None:
        return Outcome("skipped")
    record, claimed_at = claimed
    if record.status == TaskRecord.Status.FAILED:
        return Outcome(TaskRecord.Status.FAILED, queue=record.celery_queue)
    result = _to_result(record)
    task_started.send(CeleryPoolBackend, task_result=result)
    done, value, error = _run_with_deadline(result, limit=record.time_limit_s)
    retryable = done
    if not done:
        _abandon(record_id, exit_on_abandon=exit_on_abandon)
        error = TaskDeadlineExceeded(f"still running after {record.time_limit_s:g} s")
    elif error is None:
        try:
            value = normalize_json(value)
        except (TypeError, ValueError) as exc:  # the same value again next time: no retry
            error, retryable = exc, False
    return _finish(record_id, claimed_at, value=value, error=error, retryable=retryable)


def _claim(record_id: str, *, worker_id: str) -> tuple[TaskRecord, datetime] | None:
    now = timezone.now()
    with transaction.atomic():
        record = TaskRecord.objects.select_for_update(skip_locked=True).filter(id=record_id).first()
        if record is None:
            return None
        ready = record.status == TaskRecord.Status.READY and (record.run_after is None or record.run_after <= now)
        lost = record.status == TaskRecord.Status.RUNNING and (record.lease_until or now) < now
        if not (ready or lost):
            return None
        if lost:
            record.errors = [*record.errors, _error(WorkerLost(f"attempt {len(record.worker_ids)} lost its worker"))]
            if len(record.worker_ids) >= record.max_attempts:
                record.status, record.finished_at, record.lease_until = TaskRecord.Status.FAILED, now, None
                record.save()
                return record, now
        record.status = TaskRecord.Status.RUNNING
        record.worker_ids = [*record.worker_ids, worker_id]
        record.started_at = record.started_at or now
        record.last_attempted_at = now
        record.lease_until = now + timedelta(seconds=record.time_limit_s + settings.TASK_LEASE_SECONDS)
        record.save()
    return record, now


def _run_with_deadline(result: TaskResult, *, limit: float) -> tuple[bool, Any, BaseException | None]:
    box: dict[str, Any] = {}
    task = result.task

    def target() -> None:
        try:
            if task.takes_context:
                box["value"] = task.call(TaskContext(task_result=result), *result.args, **result.kwargs)
            else:
                box["value"] = task.call(*result.args, **result.kwargs)
        except BaseException as exc:
            box["error"] = exc
        finally:
            connections.close_all()  # this thread's connections only

    context = contextvars.copy_context()  # the log context of the Celery task
    thread = threading.Thread(target=context.run, args=(target,), name=f"django-task-{result.id[:8]}", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        return False, None, None
    return True, box.get("value"), box.get("error")


def _abandon(record_id: str, *, exit_on_abandon: bool) -> None:
    global _abandoned
    with _abandoned_lock:
        _abandoned += 1
        abandoned = _abandoned
    log.error("django_task_abandoned", record_id=record_id, abandoned=abandoned)
    if exit_on_abandon and abandoned >= settings.WORKER_MAX_ABANDONED_CALLS:
        log.critical("worker_exiting_abandoned_calls", abandoned=abandoned)
        os._exit(EXIT_STATUS_ABANDONED)


def _finish(
    record_id: str, claimed_at: datetime, *, value: Any, error: BaseException | None, retryable: bool
) -> Outcome:
    now = timezone.now()
    with transaction.atomic():
        record = TaskRecord.objects.select_for_update().filter(id=record_id, last_attempted_at=claimed_at).first()
        if record is None or record.status != TaskRecord.Status.RUNNING:
            return Outcome("skipped")  # reclaimed after our lease expired: the newer attempt owns it
        record.lease_until = None
        retry_in: float | None = None
        if error is None:
            record.status, record.return_value, record.finished_at = TaskRecord.Status.SUCCESSFUL, value, now
        else:
            record.errors = [*record.errors, _error(error)]
            if retryable and len(record.worker_ids) < record.max_attempts:
                retry_in = backoff(len(record.worker_ids))
                record.status, record.run_after = TaskRecord.Status.READY, now + timedelta(seconds=retry_in)
                record.sent_at = now
            else:
                record.status, record.finished_at = TaskRecord.Status.FAILED, now
        record.save()
    if record.status != TaskRecord.Status.READY:
        task_finished.send(CeleryPoolBackend, task_result=_to_result(record))
    log.info("django_task_attempt", record_id=record_id, task=record.task_path, status=record.status, retry_in=retry_in)
    return Outcome(record.status, retry_in=retry_in, queue=record.celery_queue)


def backoff(attempts: int) -> float:
    """Exponential with full jitter: up to base, 2 x base, 4 x base ... capped."""
    ceiling = min(settings.TASK_RETRY_BACKOFF_MAX_S, settings.TASK_RETRY_BACKOFF_S * 2 ** (attempts - 1))
    return _random.uniform(0, ceiling)


def _error(exc: BaseException) -> dict[str, str]:
    kind = type(exc)
    return {
        "exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
        "traceback": "".join(traceback.format_exception(exc)),
    }


# -- beat -------------------------------------------------------------------------------


def sweep(*, grace_s: float | None = None, limit: int = 500) -> int:
    """Send again what no message will run: a ``READY`` record due and unsent for
    ``grace_s`` (its publish failed, or a message was lost), a ``RUNNING`` one whose
    lease expired (its worker died). Duplicates are harmless (``execute`` claims)."""
    now = timezone.now()
    grace = timedelta(seconds=settings.CELERY_VISIBILITY_TIMEOUT if grace_s is None else grace_s)
    due = Q(status=TaskRecord.Status.READY, sent_at__lt=now - grace)
    due &= Q(run_after__isnull=True) | Q(run_after__lte=now)
    lost = Q(status=TaskRecord.Status.RUNNING, lease_until__lt=now)
    sent = 0
    with transaction.atomic():
        rows = list(
            TaskRecord.objects.select_for_update(skip_locked=True)
            .filter(due | lost)
            .order_by("enqueued_at")
            .values_list("id", "celery_queue")[:limit]
        )
        TaskRecord.objects.filter(id__in=[row[0] for row in rows]).update(sent_at=now)
    for record_id, queue in rows:
        sent += send(str(record_id), queue=queue)
    return sent


def cleanup(*, batch_size: int = 1000) -> int:
    """Delete finished records older than ``TASK_RESULT_RETENTION_DAYS`` (beat, hourly);
    ``get_result`` of one of them then raises ``TaskResultDoesNotExist``."""
    cutoff = timezone.now() - timedelta(days=settings.TASK_RESULT_RETENTION_DAYS)
    finished = [TaskRecord.Status.SUCCESSFUL, TaskRecord.Status.FAILED]
    deleted = 0
    while True:
        ids = list(
            TaskRecord.objects.filter(status__in=finished, finished_at__lt=cutoff).values_list("id", flat=True)[
                :batch_size
            ]
        )
        if not ids:
            return deleted
        deleted += TaskRecord.objects.filter(id__in=ids).delete()[0]
