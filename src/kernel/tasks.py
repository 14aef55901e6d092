"""Kernel Celery tasks: thin entry points into kernel.services."""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task, current_app, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval
from django.conf import settings

from kernel import services, tasks_backend

log = structlog.get_logger(__name__)


# Acked on receipt, unlike every other task (CELERY_TASK_ACKS_LATE): a relay message
# carries nothing (the outbox rows are the truth, and beat relays every 5 s), and the
# relay's gather wait would otherwise keep one message unacked most of the time. kombu
# 5.7's Redis transport crashes the whole worker ("Unrecoverable error: AttributeError:
# 'NoneType' object has no attribute 'hostname'", in ``restore_unacked`` on close) when
# the broker connection drops while a message is unacked: the reliability suite's Redis
# restart caught it in 1 run of 5 with the wait and acks_late.
@shared_task(name=services.RELAY_OUTBOX, ignore_result=True, acks_late=False)
def relay_outbox_task() -> int:
    return services.outbox_relay_drain(gather_s=settings.OUTBOX_RELAY_GATHER_S)


# Retries of one subscriber for one event, then a dead letter. Always explicit:
# ``self.retry(max_retries=None)`` means Celery's default (3), not "unlimited".
EVENT_HANDLER_MAX_RETRIES = 8
EVENT_RETRY_BACKOFF_S = 1  # exponential with full jitter: up to 1, 2, 4 … s
EVENT_RETRY_BACKOFF_MAX_S = 300


@shared_task(bind=True, name=services.HANDLE_EVENT, ignore_result=True, max_retries=EVENT_HANDLER_MAX_RETRIES)
def handle_event_task(self: Task, handler: str, event_type: str, payload: dict[str, Any]) -> None:
    try:
        services.event_handle(handler=handler, event_type=event_type, payload=payload)
    except Exception as exc:
        retries = self.request.retries
        if _gives_up(exc, retries):
            services.event_dead_letter(
                handler=handler, event_type=event_type, payload=payload, attempts=retries + 1, error=_describe(exc)
            )
            services.event_delivery_confirm(handler=handler, payload=payload)
            return
        raise self.retry(exc=exc, countdown=_retry_in(retries), max_retries=EVENT_HANDLER_MAX_RETRIES) from exc
    services.event_delivery_confirm(handler=handler, payload=payload)


@shared_task(name=services.HANDLE_EVENTS, ignore_result=True)
def handle_events_task(handler: str, event_type: str, payloads: list[dict[str, Any]]) -> None:
    """One subscriber for a relay batch of events: each event is handled on its own, and
    this is its first attempt. The events handled (or dead-lettered) are confirmed in one
    UPDATE; one that raised goes on alone as ``kernel.handle_event`` with its first retry's
    backoff, so its retries and dead letter are those of the single-event task."""
    done: list[dict[str, Any]] = []
    try:
        for payload in payloads:
            try:
                services.event_handle(handler=handler, event_type=event_type, payload=payload)
            except SoftTimeLimitExceeded:
                raise  # what is left stays unconfirmed: the relay sends it again
            except Exception as exc:
                if not _first_attempt_failed(handler, event_type, payload, exc):
                    continue
            done.append(payload)
    finally:
        services.event_deliveries_confirm(handler=handler, payloads=done)


def _first_attempt_failed(handler: str, event_type: str, payload: dict[str, Any], exc: Exception) -> bool:
    """Dead-letter the event or send its retry, as ``handle_event_task`` does after its
    first attempt; True when the task is done with it (dead-lettered)."""
    if _gives_up(exc, 0):
        services.event_dead_letter(
            handler=handler, event_type=event_type, payload=payload, attempts=1, error=_describe(exc)
        )
        return True
    countdown = _retry_in(0)
    log.warning(
        "event_handler_failed", handler=handler, event_type=event_type, error=_describe(exc), retry_in=countdown
    )
    try:
        current_app.send_task(
            services.HANDLE_EVENT, args=[handler, event_type, payload], countdown=countdown, retries=1
        )
    except Exception:  # broker down: the delivery stays unconfirmed and the relay sends it again
        log.warning("event_retry_send_failed", handler=handler, event_type=event_type, exc_info=True)
    return False


def _gives_up(exc: Exception, retries: int) -> bool:
    """Dead-letter now: no retry can help, or the retries are spent."""
    return isinstance(exc, services.EventNotHandleable) or retries >= EVENT_HANDLER_MAX_RETRIES


def _retry_in(retries: int) -> float:
    """Seconds before the next attempt: exponential with full jitter, capped."""
    return float(
        get_exponential_backoff_interval(EVENT_RETRY_BACKOFF_S, retries, EVENT_RETRY_BACKOFF_MAX_S, full_jitter=True)
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@shared_task(name="kernel.cleanup_idempotency_keys", ignore_result=True)
def cleanup_idempotency_keys_task() -> int:
    return services.idempotency_cleanup()


@shared_task(name="kernel.cleanup_outbox", ignore_result=True)
def cleanup_outbox_task() -> int:
    return services.outbox_cleanup()


@shared_task(bind=True, name=tasks_backend.RUN_TASK, ignore_result=True)
def run_django_task(self: Task, record_id: str) -> str:
    """Run one ``django.tasks`` result of ``kernel.tasks_backend``: one attempt, then the
    next one is sent with its back-off (a message of its own, never a sleeping thread)."""
    outcome = tasks_backend.execute(record_id, worker_id=self.request.hostname or "worker", exit_on_abandon=True)
    if outcome.retry_in is not None:
        tasks_backend.send(record_id, queue=outcome.queue, countdown=outcome.retry_in)
    return outcome.status


@shared_task(name="kernel.sweep_django_tasks", ignore_result=True)
def sweep_django_tasks_task() -> int:
    return tasks_backend.sweep()


@shared_task(name="kernel.cleanup_django_tasks", ignore_result=True)
def cleanup_django_tasks_task() -> int:
    return tasks_backend.cleanup()
