"""Running an AI task on a worker (the worker side of the lifecycle, SPEC §5).

claim (one conditional UPDATE with a short lease, on the database's clock) → call the
provider under a ``CallGuard`` (the keeper thread renews the lease, enforces the soft
and hard deadlines and stops the call on cancel) while deltas stream to Redis → finish
in one transaction (result, settlement, outbox event), conditionally on still holding
the lease, so a reclaimed task is never charged twice. While the provider is awaited
the thread holds no database connection (it goes back to the pool).

A retry does not wait in the broker: the task goes back to ``pending`` with a due time
and waits at the dispatch gate, which sends it when it is due and the queue has room.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from uuid import UUID

import structlog
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import router, transaction
from django.db.models import F, Manager, Q, Value
from django.db.models.functions import Now

from billing import services as billing
from contracts.billing import TokenUsage
from contracts.llm import ExecutionOutcome
from kernel import metrics
from kernel.db import release_connection
from llm import deltas, response_cache, streams, telemetry
from llm.limits import ProviderBusy, provider_backoff, provider_slot, task_token_estimate
from llm.models import AITask, DeadLetter
from llm.providers import Completion, ProviderError, RateLimited, TextDelta, get_provider
from llm.providers.base import CallAborted, CallGuard, guarded
from llm.providers.tokens import estimate_tokens
from llm.services import fallback
from llm.services.dispatch import queue_for
from llm.services.runtime import runtime
from llm.services.terminal import announce_terminal
from users import services as users

log = structlog.get_logger(__name__)


def backoff_seconds(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than ``Retry-After``, capped."""
    base = settings.TASK_RETRY_BACKOFF_S * (2 ** max(attempt - 1, 0))
    delay = random.uniform(base / 2, base)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, settings.TASK_RETRY_BACKOFF_MAX_S)


# One statement takes the task and returns the row: pending and due, or processing with
# an expired lease. The first attempt also records its model (``served_model``, the head of
# the fallback chain), which ``fallback.model_for_attempt`` would otherwise write in a
# statement of its own. Issue 9's profile: the UPDATE, the SELECT that re-read the row and
# that second UPDATE were three round trips per task.
_CLAIM = f"""
UPDATE {AITask._meta.db_table} SET
    status = 'processing', lease_token = %s,
    lease_expires_at = STATEMENT_TIMESTAMP() + make_interval(secs => %s),
    attempts = attempts + 1, started_at = COALESCE(started_at, STATEMENT_TIMESTAMP()), available_at = NULL,
    served_model = CASE WHEN served_model = '' THEN model ELSE served_model END
WHERE id = %s AND (
    (status = 'pending' AND (available_at IS NULL OR available_at <= STATEMENT_TIMESTAMP()))
    OR (status = 'processing' AND lease_expires_at < STATEMENT_TIMESTAMP())
)
RETURNING *"""  # noqa: S608


def _writer() -> Manager[AITask]:
    """The manager on the database writes go to: ``raw`` would route by ``db_for_read``
    (and skip the read-your-writes pin a write sets, kernel.db)."""
    return AITask.objects.db_manager(router.db_for_write(AITask))


def _claim(task_id: UUID) -> AITask | None:
    """Take the task with one conditional UPDATE; a duplicate delivery matches nothing and
    gets None."""
    claimed = list(_writer().raw(_CLAIM, [uuid.uuid4(), settings.TASK_LEASE_SECONDS, task_id]))
    return claimed[0] if claimed else None


def task_execute(*, task_id: UUID) -> ExecutionOutcome:
    task = _claim(task_id)
    if task is None:
        release_connection()
        log.info("task_not_claimed", task_id=str(task_id))
        return ExecutionOutcome(kind="skipped")
    started = time.perf_counter()
    _observe_claim(task)
    telemetry.task_claimed(task, queue=queue_for(task.priority))
    outcome = ExecutionOutcome(kind="failed", code="internal_error")  # what an exception out of _attempt counts as
    try:
        outcome = _attempt(task)
        return outcome
    finally:
        telemetry.attempt_finished(task, outcome=outcome.kind)
        _observe_outcome(task, outcome, time.perf_counter() - started)
        release_connection()
        runtime().poke(queue_for(task.priority))


def _observe_claim(task: AITask) -> None:
    queue = queue_for(task.priority)
    metrics.TASK_ATTEMPTS.labels(queue=queue, model=task.model).inc()
    if task.attempts == 1 and task.started_at is not None:  # both on the database's clock
        metrics.TASK_QUEUE_WAIT.labels(queue=queue).observe(max((task.started_at - task.created_at).total_seconds(), 0))


def _observe_outcome(task: AITask, outcome: ExecutionOutcome, seconds: float) -> None:
    queue = queue_for(task.priority)
    labels = {"queue": queue, "model": task.model}
    metrics.TASK_OUTCOMES.labels(**labels, outcome=outcome.kind, error_code=outcome.code or "").inc()
    metrics.TASK_ATTEMPT_SECONDS.labels(**labels, outcome=outcome.kind).observe(seconds)
    if outcome.kind == "done" and task.completed_at is not None:
        metrics.TASK_E2E.labels(**labels).observe(max((task.completed_at - task.created_at).total_seconds(), 0))


def _attempt(task: AITask) -> ExecutionOutcome:
    model = fallback.model_for_attempt(task)  # the task's model, or a fallback (llm.services.fallback)
    release_connection()  # nothing below holds a connection while the provider answers
    streams.publish_attempt(task.id, task.attempts)  # clients drop deltas of earlier attempts
    streams.publish_status(task)
    request = fallback.request_for(task, model)
    assert task.lease_token is not None
    guard = CallGuard()
    call = runtime().track(task_id=task.id, lease_token=task.lease_token, queue=queue_for(task.priority), guard=guard)
    produced: list[str] = []
    estimate = task_token_estimate(prompt=task.prompt, messages=task.messages, max_tokens=task.max_tokens)
    try:
        # A slot of the model's calls in flight (and its tokens per minute), shared by every
        # worker; while the provider pushes back (429) no slot is handed out.
        # The wait stays well inside the soft deadline: no slot in time hands the task back.
        wait = min(settings.LLM_SLOT_WAIT_S, max(call.soft_deadline - time.monotonic(), 0) / 2)
        with (
            provider_slot(model, timeout_s=wait, tokens=estimate) as slot,
            guarded(guard),
            telemetry.provider_call(task, model),
        ):
            completion = _run(get_provider().stream(request), task, produced, guard)
            telemetry.call_completed(completion)
            slot.record_tokens(completion.input_tokens + completion.output_tokens)
    except ProviderBusy as exc:
        return _wait_for_provider(task, exc)
    except SoftTimeLimitExceeded:  # the prefork pool's signal, where that pool is used
        return _timed_out(task)
    except CallAborted as exc:
        return _aborted(task, exc.reason, produced)
    except ProviderError as exc:
        if guard.aborted:  # aborting closed the connection under the SDK: not an outage
            return _aborted(task, guard.reason or "aborted", produced)
        if not exc.retryable:
            return _fail(task, code=exc.code, error=str(exc))
        fallback.record_failure(task, model, exc)  # the next attempt goes to the next model
        if isinstance(exc, RateLimited):  # back-pressure: every worker holds off this model
            provider_backoff(model, exc.retry_after or backoff_seconds(task.attempts))
        return _retry_or_dead_letter(task, code=exc.code, error=str(exc), retry_after=exc.retry_after)
    except Exception as exc:  # an unexpected bug: retry like an outage, dead-letter in the end
        if guard.aborted:
            return _aborted(task, guard.reason or "aborted", produced)
        log.exception("task_unexpected_error", task_id=str(task.id))
        return _retry_or_dead_letter(
            task, code="internal_error", error=f"Internal error ({type(exc).__name__}).", retry_after=None
        )
    finally:
        runtime().untrack(call)
    fallback.record_success(model)
    return _complete(task, completion)


def _aborted(task: AITask, reason: str, produced: list[str]) -> ExecutionOutcome:
    if reason == "timeout":
        return _timed_out(task)
    if reason == "cancelled":
        usage = TokenUsage(input_tokens=estimate_tokens(task.prompt), output_tokens=_output_tokens(produced))
        return _charge_cancelled(task, usage)
    log.info("task_lease_lost", task_id=str(task.id))
    return ExecutionOutcome(kind="discarded")


def _output_tokens(produced: list[str]) -> int:
    return estimate_tokens("".join(produced)) if produced else 0


def _timed_out(task: AITask) -> ExecutionOutcome:
    return _fail(task, code="timeout", error=f"The task exceeded its time limit of {settings.TASK_SOFT_TIME_LIMIT} s.")


def _run(events: Iterator[TextDelta | Completion], task: AITask, produced: list[str], guard: CallGuard) -> Completion:
    completion: Completion | None = None
    started = time.perf_counter()
    outcome = "error"
    try:
        for event in events:
            if isinstance(event, TextDelta):
                first = not produced
                if first:
                    ttft = metrics.PROVIDER_TTFT.labels(provider=settings.LLM_PROVIDER, model=task.model)
                    ttft.observe(time.perf_counter() - started)
                produced.append(event.text)
                streams.send_delta(task.id, event.text, task.attempts, first=first)
            elif isinstance(event, Completion):
                completion = event
        if completion is None:
            raise ProviderError("The provider ended the stream without a result.")
        outcome = "ok"
        return completion
    finally:
        if guard.aborted:  # cancelled or reclaimed: its stream may have moved on already
            deltas.discard(task.id)
        else:  # the chunks still buffered go before the status event
            deltas.flush(task.id)
        latency = metrics.PROVIDER_LATENCY.labels(provider=settings.LLM_PROVIDER, model=task.model, outcome=outcome)
        latency.observe(time.perf_counter() - started)


def _held(task: AITask) -> Q:
    return Q(id=task.id, status=AITask.Status.PROCESSING, lease_token=task.lease_token)


def _complete(task: AITask, completion: Completion) -> ExecutionOutcome:
    usage = TokenUsage(input_tokens=completion.input_tokens, output_tokens=completion.output_tokens)
    with billing.budget_transaction():  # the budget rows last, with the COMMIT
        updated = AITask.objects.filter(_held(task)).update(
            status=AITask.Status.DONE,
            result=completion.text,
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            completed_at=Now(),
            lease_token=None,
            lease_expires_at=None,
            error=None,
            error_code=None,
        )
        if not updated:  # cancelled meanwhile (charged for what was produced), or reclaimed
            return _charge_cancelled(task, usage)
        if task.reservation_id:  # at the price of the model that answered
            entry = billing.reservation_settle(
                reservation_id=task.reservation_id, usage=usage, model=fallback.answered_by(task)
            )
            _store_cost(task, entry.cost_usd, entry.input_usd_per_mtok, entry.output_usd_per_mtok)
        else:
            task.refresh_from_db()
        announce_terminal(task)
        _correct_tokens(task, actual=completion.input_tokens + completion.output_tokens)
        if task.use_cache:
            key = response_cache.cache_key(
                organization_id=task.organization_id,
                model=task.model,
                max_tokens=task.max_tokens,
                prompt=task.prompt,
                messages=task.messages,
            )
            answer = response_cache.CachedAnswer(completion.text, completion.input_tokens, completion.output_tokens)
            transaction.on_commit(lambda: response_cache.put(key, answer))
    return ExecutionOutcome(kind="done")


_STORE_COST = f"""
UPDATE {AITask._meta.db_table} SET cost_usd = %s, input_usd_per_mtok = %s, output_usd_per_mtok = %s
WHERE id = %s RETURNING *"""  # noqa: S608


def _store_cost(task: AITask, cost: Decimal, input_usd_per_mtok: Decimal, output_usd_per_mtok: Decimal) -> None:
    """Record what the task was charged and refresh ``task`` from the row the same
    statement returns (``completed_at`` is the database's), as ``refresh_from_db`` would."""
    fresh = next(iter(_writer().raw(_STORE_COST, [cost, input_usd_per_mtok, output_usd_per_mtok, task.id])))
    for field in AITask._meta.concrete_fields:
        setattr(task, field.attname, getattr(fresh, field.attname))


def _charge_cancelled(task: AITask, usage: TokenUsage) -> ExecutionOutcome:
    """The task was cancelled while this attempt ran: the provider did the work up to the
    cancel, so charge what it produced (the client may have read it over SSE). Only the
    holder of the lease charges, once: cancel keeps the lease token for this purpose."""
    with billing.budget_transaction():  # the budget rows last, with the COMMIT
        charged = AITask.objects.filter(
            id=task.id, status=AITask.Status.CANCELLED, lease_token=task.lease_token
        ).update(
            lease_token=None,
            lease_expires_at=None,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
        )
        if not charged:  # the lease was lost to another worker: that attempt settles
            log.info("task_result_discarded", task_id=str(task.id))
            return ExecutionOutcome(kind="discarded")
        if task.reservation_id:
            model = fallback.answered_by(task)
            entry = billing.reservation_settle(reservation_id=task.reservation_id, usage=usage, model=model)
            AITask.objects.filter(id=task.id).update(cost_usd=entry.cost_usd)
    log.info("task_cancelled_charged", task_id=str(task.id), output_tokens=usage.output_tokens)
    return ExecutionOutcome(kind="cancelled")


def _fail(task: AITask, *, code: str, error: str, dead_letter: bool = False) -> ExecutionOutcome:
    with billing.budget_transaction():  # the budget rows last, with the COMMIT
        updated = AITask.objects.filter(_held(task)).update(
            status=AITask.Status.FAILED,
            error=error,
            error_code=code,
            completed_at=Now(),
            lease_token=None,
            lease_expires_at=None,
        )
        if not updated:
            return _charge_cancelled(task, TokenUsage(input_tokens=0, output_tokens=0))
        fail_bookkeeping(task, error=error, dead_letter=dead_letter)
    return ExecutionOutcome(kind="failed", code=code)


def task_fail_abandoned(*, task_id: UUID, lease_token: UUID) -> bool:
    """The keeper's last resort for a call that outlived its hard deadline: fail the task
    for the thread that is stuck in it (which will find the lease gone if it returns)."""
    task = AITask.objects.filter(id=task_id, lease_token=lease_token).first()
    if task is None:
        return False
    error = f"The task exceeded its hard time limit of {settings.TASK_TIME_LIMIT} s and was abandoned."
    return _fail(task, code="timeout", error=error).kind == "failed"


def fail_bookkeeping(task: AITask, *, error: str, dead_letter: bool) -> None:
    """What every path to ``failed`` does, inside its transaction: release the budget,
    record the dead letter, announce the terminal state."""
    if task.reservation_id:
        billing.reservation_release(reservation_id=task.reservation_id)
    if dead_letter:
        DeadLetter.objects.create(task_id=task.id, reason=error, attempts=task.attempts)
    task.refresh_from_db()
    announce_terminal(task)
    _correct_tokens(task, actual=0)


def _correct_tokens(task: AITask, *, actual: int) -> None:
    """Tokens per minute were reserved at submit from an estimate: settle them to what the
    task used (after commit; a Redis outage only loses the correction)."""
    estimated = task_token_estimate(prompt=task.prompt, messages=task.messages, max_tokens=task.max_tokens)
    transaction.on_commit(
        lambda: users.token_usage_correct(
            organization_id=task.organization_id, api_key_id=task.api_key_id, estimated=estimated, actual=actual
        )
    )


def _wait_for_provider(task: AITask, busy: ProviderBusy) -> ExecutionOutcome:
    """No slot for the model in time (its calls in flight are at the limit, or it pushes
    back with 429s): back to the gate with a due time, the attempt not spent."""
    updated = AITask.objects.filter(_held(task)).update(
        status=AITask.Status.PENDING,
        attempts=F("attempts") - 1,
        lease_token=None,
        lease_expires_at=None,
        available_at=Now() + Value(timedelta(seconds=busy.retry_after_s)),
        dispatched_at=None,
    )
    if not updated:
        return _charge_cancelled(task, TokenUsage(input_tokens=0, output_tokens=0))
    log.info("task_waits_for_provider", task_id=str(task.id), model=task.model, reason=busy.reason)
    return ExecutionOutcome(
        kind="retry", countdown=busy.retry_after_s, queue=queue_for(task.priority), code="provider_busy"
    )


def _retry_or_dead_letter(task: AITask, *, code: str, error: str, retry_after: float | None) -> ExecutionOutcome:
    if task.attempts >= settings.TASK_MAX_ATTEMPTS:
        return _fail(task, code=code, error=f"{error} (gave up after {task.attempts} attempts)", dead_letter=True)
    countdown = backoff_seconds(task.attempts, retry_after)
    # Back to the gate with a due time: the gate sends it when it is due and there is room.
    updated = AITask.objects.filter(_held(task)).update(
        status=AITask.Status.PENDING,
        lease_token=None,
        lease_expires_at=None,
        error=error,
        error_code=code,
        available_at=Now() + Value(timedelta(seconds=countdown)),
        dispatched_at=None,
    )
    if not updated:
        return _charge_cancelled(task, TokenUsage(input_tokens=0, output_tokens=0))
    task.refresh_from_db()
    streams.publish_status(task)
    log.info(
        "task_retry_scheduled",
        task_id=str(task.id),
        attempt=task.attempts,
        countdown=round(countdown, 2),
        error_code=code,
    )
    return ExecutionOutcome(kind="retry", countdown=countdown, queue=queue_for(task.priority), code=code)
