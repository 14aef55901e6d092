"""Accepting, reading and cancelling AI tasks (the request side of the lifecycle).

Nothing slow runs here: validate, reserve budget, insert, dispatch after commit.
"""

from __future__ import annotations

import uuid
from uuid import UUID

import structlog
from celery import current_app
from django.db import transaction
from django.utils import timezone

from billing import services as billing
from contracts.billing import ReservationRequest, TokenUsage
from contracts.llm import AITask as AITaskContract
from contracts.llm import AITaskPage, TaskSubmission
from kernel.errors import ConflictError, NotFoundError
from kernel.flags import Switch
from llm import response_cache, selectors, streams
from llm.limits import task_token_estimate
from llm.models import AITask, DeadLetter
from llm.providers.tokens import estimate_prompt_tokens, estimate_tokens
from llm.services import dispatch as gate
from llm.services._common import announce_terminal, dispatch, enqueue_webhook, to_task
from users import services as users

log = structlog.get_logger(__name__)
# Kill switch: off (in the admin) and every submission goes to a provider, no cached answer.
CACHE_LOOKUP = Switch("llm.response_cache_lookup", default=True, note="serve identical prompts from the cache")


class TaskNotFound(NotFoundError):
    default_detail = "AI task not found."


class TaskNotCancellable(ConflictError):
    code = "task_not_cancellable"
    default_detail = "The task has already finished."


class TaskNotRerunnable(ConflictError):
    code = "task_not_rerunnable"
    default_detail = "Only failed tasks can be re-run."


def task_submit(submission: TaskSubmission) -> AITaskContract:
    """Accept a task: a cache hit is answered at once; otherwise reserve, insert, dispatch."""
    key = response_cache.cache_key(
        organization_id=submission.organization_id,
        model=submission.model,
        max_tokens=submission.max_tokens,
        prompt=submission.prompt,
        messages=_messages(submission),
    )
    hit = response_cache.get(key) if submission.use_cache and CACHE_LOOKUP.is_active() else None
    if hit is not None:
        return _submit_cached(submission, hit)
    tokens = task_token_estimate(prompt=submission.prompt, max_tokens=submission.max_tokens)
    org_id, key_id = submission.organization_id, submission.api_key_id
    users.token_usage_reserve(organization_id=org_id, api_key_id=key_id, tokens=tokens)  # or 429
    try:
        return _submit_new(submission)
    except BaseException:
        users.token_usage_correct(organization_id=org_id, api_key_id=key_id, estimated=tokens, actual=0)
        raise


def _submit_new(submission: TaskSubmission) -> AITaskContract:
    task_id = uuid.uuid4()
    # Straight to the broker while the queue has room and nobody waits at the gate;
    # otherwise the task waits there (dispatched_at NULL) for its fair turn. Asked before
    # the transaction: its count and Redis read must not run under the budget row lock.
    admitted = gate.admit_at_submit(submission.priority)
    with transaction.atomic():
        # The budget hold locks the organization's budget row until COMMIT (every submit
        # of the organization waits on it), so only the task's INSERT runs after it.
        reservation = billing.budget_reserve(
            ReservationRequest(
                organization_id=submission.organization_id,
                api_key_id=submission.api_key_id,
                task_id=task_id,
                model=submission.model,
                estimated_input_tokens=_input_estimate(submission),
                max_output_tokens=submission.max_tokens,
            )
        )
        task = AITask.objects.create(
            id=task_id,
            reservation_id=reservation.id,
            input_usd_per_mtok=reservation.input_usd_per_mtok,
            output_usd_per_mtok=reservation.output_usd_per_mtok,
            dispatched_at=timezone.now() if admitted else None,
            dispatch_count=1 if admitted else 0,
            **_fields(submission),
        )
        if admitted:
            transaction.on_commit(lambda: dispatch(task.id, task.priority))
    return to_task(task)


def _messages(submission: TaskSubmission) -> list[dict[str, str]] | None:
    if submission.messages is None:
        return None
    return [{"role": m.role, "content": m.content} for m in submission.messages]


def _input_estimate(submission: TaskSubmission) -> int:
    if submission.messages is None:
        return estimate_tokens(submission.prompt)
    return estimate_prompt_tokens(m.content for m in submission.messages)


def _fields(submission: TaskSubmission) -> dict[str, object]:
    return {
        "organization_id": submission.organization_id,
        "api_key_id": submission.api_key_id,
        "prompt": submission.prompt,
        "model": submission.model,
        "priority": submission.priority,
        "max_tokens": submission.max_tokens,
        "metadata": submission.metadata,
        "callback_url": submission.callback_url,
        "use_cache": submission.use_cache,
        "request_id": submission.request_id or "",
        "messages": _messages(submission),
        "fallback_models": list(submission.fallback_models),
    }


def _submit_cached(submission: TaskSubmission, hit: response_cache.CachedAnswer) -> AITaskContract:
    now = timezone.now()
    with transaction.atomic():
        task = AITask.objects.create(
            status=AITask.Status.DONE,
            served_model=submission.model,
            result=hit.text,
            cached=True,
            input_tokens=hit.input_tokens,
            output_tokens=hit.output_tokens,
            cost_usd=0,
            started_at=now,
            completed_at=now,
            **_fields(submission),
        )
        billing.usage_record_cache_hit(
            organization_id=task.organization_id,
            api_key_id=task.api_key_id,
            task_id=task.id,
            model=task.model,
            usage=TokenUsage(input_tokens=hit.input_tokens, output_tokens=hit.output_tokens),
        )
        announce_terminal(task)
    return to_task(task)


def task_get(*, organization_id: UUID, task_id: UUID) -> AITaskContract:
    task = selectors.task_find(organization_id=organization_id, task_id=task_id)
    if task is None:
        raise TaskNotFound()
    return to_task(task)


def task_list(
    *, organization_id: UUID, status: str | None = None, cursor: str | None = None, limit: int = 20
) -> AITaskPage:
    rows, next_cursor = selectors.task_page(organization_id=organization_id, status=status, cursor=cursor, limit=limit)
    return AITaskPage(results=[to_task(row) for row in rows], next_cursor=next_cursor)


def task_cancel(*, organization_id: UUID, task_id: UUID) -> AITaskContract:
    """Cancel an open task. A pending one is released at once; a worker running one stops
    its call (it polls the cancel flag) and settles what the provider produced."""
    with transaction.atomic():
        task = selectors.task_queryset(organization_id=organization_id).select_for_update().filter(id=task_id).first()
        if task is None:
            raise TaskNotFound()
        if task.status not in AITask.OPEN:
            raise TaskNotCancellable(status=task.status)
        running = task.status == AITask.Status.PROCESSING
        task.status = AITask.Status.CANCELLED
        task.completed_at = timezone.now()
        task.lease_expires_at = None
        task.save(update_fields=["status", "completed_at", "lease_expires_at", "updated_at"])
        # A running attempt keeps its lease token and the reservation: the worker stops
        # within about a second and charges what the provider produced up to the cancel
        # (the client may have read it over SSE). The sweeper releases the reservation
        # if that worker is gone.
        if task.reservation_id and not running:
            billing.reservation_release(reservation_id=task.reservation_id)
        announce_terminal(task)
        transaction.on_commit(lambda: _after_cancel(task))
        transaction.on_commit(lambda: _tokens_settle(task))
    return to_task(task)


def _tokens_settle(task: AITask) -> None:
    """A cancelled task gives back its reserved tokens per minute (the worker settles the others)."""
    users.token_usage_correct(
        organization_id=task.organization_id,
        api_key_id=task.api_key_id,
        estimated=task_token_estimate(prompt=task.prompt, max_tokens=task.max_tokens),
        actual=task.input_tokens + task.output_tokens,
    )


def _after_cancel(task: AITask) -> None:
    streams.mark_cancelled(task.id)
    try:  # a message still waiting in the broker will not start
        current_app.control.revoke(str(task.id), terminate=False)
    except Exception:
        log.warning("revoke_failed", task_id=str(task.id), exc_info=True)


def task_rerun(*, task_id: UUID) -> AITaskContract:
    """Run a failed task again from scratch (admin, dead-letter replay): a new budget
    reservation, attempts reset, dispatched after commit."""
    with transaction.atomic():
        task = AITask.objects.select_for_update().filter(id=task_id).first()
        if task is None:
            raise TaskNotFound()
        if task.status != AITask.Status.FAILED:
            raise TaskNotRerunnable(status=task.status)
        reservation = billing.budget_reserve(
            ReservationRequest(
                organization_id=task.organization_id,
                api_key_id=task.api_key_id,
                task_id=task.id,
                model=task.model,
                estimated_input_tokens=estimate_tokens(task.prompt),
                max_output_tokens=task.max_tokens,
            )
        )
        AITask.objects.filter(pk=task.pk).update(
            status=AITask.Status.PENDING,
            attempts=0,
            result=None,
            error=None,
            error_code=None,
            started_at=None,
            completed_at=None,
            lease_token=None,
            lease_expires_at=None,
            available_at=None,
            dispatched_at=timezone.now(),
            reservation_id=reservation.id,
            cost_usd=0,
            input_tokens=0,
            output_tokens=0,
            input_usd_per_mtok=reservation.input_usd_per_mtok,
            output_usd_per_mtok=reservation.output_usd_per_mtok,
        )
        DeadLetter.objects.filter(task_id=task.pk, kind=DeadLetter.Kind.TASK, replayed_at__isnull=True).update(
            replayed_at=timezone.now()
        )
        task.refresh_from_db()
        transaction.on_commit(lambda: dispatch(task.id, task.priority))
        # Counted without a check (staff asked for it); the worker corrects it on settling.
        transaction.on_commit(
            lambda: users.token_usage_correct(
                organization_id=task.organization_id,
                api_key_id=task.api_key_id,
                estimated=0,
                actual=task_token_estimate(prompt=task.prompt, max_tokens=task.max_tokens),
            )
        )
    return to_task(task)


def dead_letter_replay(*, dead_letter_id: int) -> AITaskContract:
    """Replay a dead letter: re-run a task that gave up, or deliver its webhook again."""
    letter = DeadLetter.objects.filter(id=dead_letter_id).first()
    if letter is None:
        raise NotFoundError("Dead letter not found.")
    if letter.kind == DeadLetter.Kind.TASK:
        return task_rerun(task_id=letter.task_id)
    with transaction.atomic():
        DeadLetter.objects.filter(pk=letter.pk).update(replayed_at=timezone.now())
        AITask.objects.filter(id=letter.task_id).update(
            webhook_status=AITask.WebhookStatus.PENDING,
            webhook_attempts=0,
            webhook_last_error="",
            webhook_next_at=None,
            webhook_claimed_until=None,
        )
        transaction.on_commit(lambda: enqueue_webhook(letter.task_id))
    return to_task(AITask.objects.get(id=letter.task_id))
