"""Running an AI task on a worker (the worker side of the lifecycle, SPEC §5).

claim (one conditional UPDATE, with a lease) → call the provider, streaming deltas to
Redis → finish in one transaction (result, settlement, outbox event), conditionally on
still holding the lease, so a cancelled or reclaimed task is never charged.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Literal
from uuid import UUID

import structlog
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing import services as billing
from contracts.billing import TokenUsage
from llm import response_cache, streams
from llm.models import AITask, DeadLetter
from llm.providers import Completion, CompletionRequest, ProviderError, TextDelta, get_provider
from llm.services._common import announce_terminal, publish_status, queue_for

log = structlog.get_logger(__name__)
CANCEL_CHECK_EVERY = 8  # deltas between checks of the cancel flag


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["done", "failed", "retry", "skipped", "discarded"]
    countdown: float | None = None
    queue: str | None = None


def backoff_seconds(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than ``Retry-After``, capped."""
    base = settings.TASK_RETRY_BACKOFF_S * (2 ** max(attempt - 1, 0))
    delay = random.uniform(base / 2, base)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.TASK_RETRY_BACKOFF_MAX_S)


def _claim(task_id: UUID) -> AITask | None:
    """Take the task with one conditional UPDATE: pending and due, or processing with an
    expired lease. A duplicate delivery matches nothing and gets None."""
    now = timezone.now()
    token = uuid.uuid4()
    claimable = Q(status=AITask.Status.PENDING) & (Q(available_at__isnull=True) | Q(available_at__lte=now))
    claimable |= Q(status=AITask.Status.PROCESSING, lease_expires_at__lt=now)
    claimed = AITask.objects.filter(claimable, id=task_id).update(
        status=AITask.Status.PROCESSING,
        lease_token=token,
        lease_expires_at=now + timedelta(seconds=settings.TASK_LEASE_SECONDS),
        attempts=F("attempts") + 1,
        started_at=Coalesce(F("started_at"), Value(now)),
        available_at=None,
    )
    if not claimed:
        return None
    return AITask.objects.get(id=task_id)


def task_execute(*, task_id: UUID) -> Outcome:
    task = _claim(task_id)
    if task is None:
        log.info("task_not_claimed", task_id=str(task_id))
        return Outcome("skipped")
    publish_status(task)
    provider = get_provider()
    request = CompletionRequest.from_prompt(
        task.prompt, model=task.model, max_tokens=task.max_tokens, attempt=task.attempts
    )
    try:
        completion = _run(provider.stream(request), task)
    except SoftTimeLimitExceeded:
        return _fail(
            task, code="timeout", error=f"The task exceeded its time limit of {settings.TASK_SOFT_TIME_LIMIT} s."
        )
    except ProviderError as exc:
        if not exc.retryable:
            return _fail(task, code=exc.code, error=str(exc))
        return _retry_or_dead_letter(task, code=exc.code, error=str(exc), retry_after=exc.retry_after)
    except _Cancelled:
        return Outcome("discarded")
    except Exception as exc:  # an unexpected bug: retry like an outage, dead-letter in the end
        log.exception("task_unexpected_error", task_id=str(task.id))
        return _retry_or_dead_letter(
            task, code="internal_error", error=f"Internal error ({type(exc).__name__}).", retry_after=None
        )
    return _complete(task, completion)


class _Cancelled(Exception):
    pass


def _run(events: Iterator[TextDelta | Completion], task: AITask) -> Completion:
    completion: Completion | None = None
    for index, event in enumerate(events):
        if isinstance(event, TextDelta):
            streams.publish(task.id, "delta", {"text": event.text})
            if index % CANCEL_CHECK_EVERY == CANCEL_CHECK_EVERY - 1 and streams.is_cancelled(task.id):
                raise _Cancelled()
        elif isinstance(event, Completion):
            completion = event
    if completion is None:
        raise ProviderError("The provider ended the stream without a result.")
    return completion


def _held(task: AITask) -> Q:
    return Q(id=task.id, status=AITask.Status.PROCESSING, lease_token=task.lease_token)


def _complete(task: AITask, completion: Completion) -> Outcome:
    now = timezone.now()
    with transaction.atomic():
        updated = AITask.objects.filter(_held(task)).update(
            status=AITask.Status.DONE,
            result=completion.text,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            completed_at=now,
            lease_token=None,
            lease_expires_at=None,
            error=None,
            error_code=None,
        )
        if not updated:  # cancelled meanwhile, or the lease was lost: discard, charge nothing
            log.info("task_result_discarded", task_id=str(task.id))
            return Outcome("discarded")
        cost = Decimal(0)
        if task.reservation_id:
            entry = billing.reservation_settle(
                reservation_id=task.reservation_id,
                usage=TokenUsage(input_tokens=completion.input_tokens, output_tokens=completion.output_tokens),
            )
            cost = entry.cost_usd
            AITask.objects.filter(id=task.id).update(cost_usd=cost)
        task.refresh_from_db()
        announce_terminal(task)
        if task.use_cache:
            key = response_cache.cache_key(
                organization_id=task.organization_id, model=task.model, max_tokens=task.max_tokens, prompt=task.prompt
            )
            answer = response_cache.CachedAnswer(completion.text, completion.input_tokens, completion.output_tokens)
            transaction.on_commit(lambda: response_cache.put(key, answer))
    return Outcome("done")


def _fail(task: AITask, *, code: str, error: str, dead_letter: bool = False) -> Outcome:
    with transaction.atomic():
        updated = AITask.objects.filter(_held(task)).update(
            status=AITask.Status.FAILED,
            error=error,
            error_code=code,
            completed_at=timezone.now(),
            lease_token=None,
            lease_expires_at=None,
        )
        if not updated:
            return Outcome("discarded")
        fail_bookkeeping(task, error=error, dead_letter=dead_letter)
    return Outcome("failed")


def fail_bookkeeping(task: AITask, *, error: str, dead_letter: bool) -> None:
    """What every path to ``failed`` does, inside its transaction: release the budget,
    record the dead letter, announce the terminal state."""
    if task.reservation_id:
        billing.reservation_release(reservation_id=task.reservation_id)
    if dead_letter:
        DeadLetter.objects.create(task_id=task.id, reason=error, attempts=task.attempts)
    task.refresh_from_db()
    announce_terminal(task)


def _retry_or_dead_letter(task: AITask, *, code: str, error: str, retry_after: float | None) -> Outcome:
    if task.attempts >= settings.TASK_MAX_ATTEMPTS:
        return _fail(task, code=code, error=f"{error} (gave up after {task.attempts} attempts)", dead_letter=True)
    countdown = backoff_seconds(task.attempts, retry_after)
    now = timezone.now()
    updated = AITask.objects.filter(_held(task)).update(
        status=AITask.Status.PENDING,
        lease_token=None,
        lease_expires_at=None,
        error=error,
        error_code=code,
        available_at=now + timedelta(seconds=countdown),
        dispatched_at=now,
    )
    if not updated:
        return Outcome("discarded")
    task.refresh_from_db()
    publish_status(task)
    log.info(
        "task_retry_scheduled",
        task_id=str(task.id),
        attempt=task.attempts,
        countdown=round(countdown, 2),
        error_code=code,
    )
    return Outcome("retry", countdown=countdown, queue=queue_for(task.priority))
