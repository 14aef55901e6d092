"""Accepting an AI task (``POST /api/v1/ai-tasks/``, and every chat turn).

Nothing slow runs here: a response-cache hit is answered at once; otherwise check the
tokens-per-minute budget, hold the cost budget, insert, dispatch after commit.
"""

from __future__ import annotations

import uuid

import structlog
from django.db import transaction
from django.utils import timezone

from billing import services as billing
from contracts.billing import ReservationRequest, TokenUsage
from contracts.llm import AITask as AITaskContract
from contracts.llm import TaskSubmission
from kernel.db import insert_row
from kernel.flags import Switch
from llm import response_cache, telemetry
from llm.limits import input_token_estimate, task_token_estimate
from llm.models import AITask
from llm.services import dispatch as gate
from llm.services.dispatch import send
from llm.services.mapping import to_task
from llm.services.terminal import announce_terminal
from users import services as users

log = structlog.get_logger(__name__)
# Kill switch: off (in the admin) and every submission goes to a provider, no cached answer.
CACHE_LOOKUP = Switch("llm.response_cache_lookup", default=True, note="serve identical prompts from the cache")


def task_submit(submission: TaskSubmission) -> AITaskContract:
    """Accept a task: a cache hit is answered at once; otherwise reserve, insert, dispatch."""
    messages = _messages(submission)
    key = response_cache.cache_key(
        organization_id=submission.organization_id,
        model=submission.model,
        max_tokens=submission.max_tokens,
        prompt=submission.prompt,
        messages=messages,
    )
    hit = response_cache.get(key) if submission.use_cache and CACHE_LOOKUP.is_active() else None
    if hit is not None:
        return _submit_cached(submission, hit)
    tokens = task_token_estimate(prompt=submission.prompt, messages=messages, max_tokens=submission.max_tokens)
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
    # Every write of the submit (the reservation, the task, the budget hold) is deferred
    # to the end of the block and goes to PostgreSQL as one BEGIN; ...; COMMIT, the hold
    # last: it locks the organization's budget row, which every submit of the organization
    # waits on, for the server's execution of those statements only, and the request makes
    # one round trip for all of them (billing.budget_transaction, kernel.writes). A refused
    # hold rolls the task back with it. Nested in a caller's transaction (a chat turn), the
    # writes run at the block's end and commit with the caller.
    with billing.budget_transaction(atomic=False):
        reservation = billing.budget_reserve(
            ReservationRequest(
                organization_id=submission.organization_id,
                api_key_id=submission.api_key_id,
                task_id=task_id,
                model=submission.model,
                estimated_input_tokens=input_token_estimate(prompt=submission.prompt, messages=submission.messages),
                max_output_tokens=submission.max_tokens,
                fallback_models=list(submission.fallback_models),
            )
        )
        task = AITask(
            id=task_id,
            reservation_id=reservation.id,
            input_usd_per_mtok=reservation.input_usd_per_mtok,
            output_usd_per_mtok=reservation.output_usd_per_mtok,
            dispatched_at=timezone.now() if admitted else None,
            dispatch_count=1 if admitted else 0,
            **_fields(submission),
        )
        insert_row(task)  # AITask.objects.create, minus compiling the INSERT every time
    telemetry.task_accepted(task_id)  # a later send (held, retried) continues this trace
    if admitted:  # after the block: on_commit inside it would run before the COMMIT
        transaction.on_commit(lambda: send(task.id, task.priority))
    return to_task(task)


def _messages(submission: TaskSubmission) -> list[dict[str, str]] | None:
    if submission.messages is None:
        return None
    return [{"role": m.role, "content": m.content} for m in submission.messages]


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
