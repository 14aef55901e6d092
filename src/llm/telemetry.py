"""The llm context's part of a trace (kernel.tracing; nothing at all while tracing is off).

The instrumentations give a task's trace its frame: the server span of ``POST /api/v1/ai-tasks/``
(202), the Celery producer span of the dispatch after commit, the consumer span of the run
on the worker. This module adds, inside it:

- ``switchyard.queue_wait``: from the submit (a retry: its send) to the claim, a sibling of the run span
  under the producer span (the waterfall reads publish → wait → run); the run span carries
  the task, its organization, the attempt, the request id and ``switchyard.queue_wait_ms``.
- the provider span, named and attributed by the OpenTelemetry GenAI semantic conventions
  (``chat {model}``, kind CLIENT, ``gen_ai.*``), plus organization, task id and cost. Its
  time is the call's; the cost is known only once the attempt has settled, so the span is
  ended then (``attempt_finished``), at the time the call ended.
- ``publish task-events``: each SSE event a worker appends to the task's Redis stream
  (attempt and status; the answer's chunks are counted on the provider span instead of
  one span each).

A task the gate sends later — held at submit, or a retry — is sent by a worker's keeper
thread, outside any trace: ``task_accepted`` remembers the submitting request's context in
Redis (``sy:task-trace:<id>``, for ``TRACE_TTL_S``) and ``task_send`` continues it, so every
attempt of the task is in the trace of its 202. A send inside a trace (the request's own,
an admin's re-run, the sweeper's run) stays in that trace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from kernel import context, tracing

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from llm.models import AITask
    from llm.providers import Completion

# GenAI semantic conventions (opentelemetry-semantic-conventions, gen_ai_attributes).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
RESPONSE_MODEL = "gen_ai.response.model"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ERROR_TYPE = "error.type"
# Switchyard's own.
TASK_ID = "switchyard.task_id"
ORGANIZATION_ID = "switchyard.organization_id"
COST_USD = "switchyard.cost_usd"
ATTEMPT = "switchyard.attempt"
QUEUE_WAIT_MS = "switchyard.queue_wait_ms"
OUTCOME = "switchyard.outcome"
REQUEST_ID = "switchyard.request_id"
DELTAS = "switchyard.stream.deltas"
TRACE_TTL_S = 3600  # how long a task's trace can be continued by the gate (held, retried)
# The provider names of the conventions where ours differ from them.
_PROVIDER_NAMES = {"openai_compatible": "openai"}


@dataclass
class _Call:
    span: Span
    ended_ns: int | None = None
    deltas: int = 0


_OFF: AbstractContextManager[None] = nullcontext()  # tracing off: one shared no-op block
_local = threading.local()  # the attempt's provider span until it settles (one call per thread)


def _task_attributes(task: AITask) -> dict[str, tracing.AttributeValue]:
    return {TASK_ID: str(task.id), ORGANIZATION_ID: str(task.organization_id)}


def _trace_key(task_id: UUID | str) -> str:
    return f"sy:task-trace:{task_id}"


def task_accepted(task_id: UUID) -> None:
    """A task was accepted: remember the request's trace, for a send by the gate later."""
    if not tracing.enabled():
        return
    headers = tracing.carrier()
    if headers is None or "traceparent" not in headers:
        return
    try:
        with tracing.quiet():  # the trace's own bookkeeping, not the request's work
            get_redis_connection("default").set(_trace_key(task_id), headers["traceparent"], ex=TRACE_TTL_S)
    except RedisError:
        pass  # the send starts a trace of its own, as before


def task_send(task_id: UUID) -> AbstractContextManager[None]:
    """Around a send of ``task_id`` to the broker: outside any trace (the gate's fill on the
    keeper thread), the send continues the task's own trace when it was remembered."""
    if not tracing.enabled() or tracing.current_span() is not None:
        return _OFF
    try:
        with tracing.quiet():
            traceparent = get_redis_connection("default").get(_trace_key(task_id))
    except RedisError:
        return _OFF
    if not traceparent:
        return _OFF
    value = traceparent.decode() if isinstance(traceparent, bytes) else str(traceparent)
    return cast("AbstractContextManager[None]", tracing.continued({"traceparent": value}))


def task_claimed(task: AITask, *, queue: str) -> None:
    """A worker claimed ``task``: the run span gets the task, and the wait becomes a span."""
    run = tracing.current_span()
    if run is None:
        return
    claimed_ns = time.time_ns()
    # The first attempt waited from the submit (at the gate, then in the broker); a retry
    # from its send (dispatched_at: now() of who sent it).
    since = task.created_at if task.attempts <= 1 else task.dispatched_at or task.created_at
    waited_ns = max(claimed_ns - int(since.timestamp() * 1e9), 0)
    run.set_attributes({**_task_attributes(task), ATTEMPT: task.attempts, QUEUE_WAIT_MS: round(waited_ns / 1e6, 3)})
    request_id = context.current_request_id()  # the dispatching request's (kernel.celery_signals)
    if request_id:
        run.set_attribute(REQUEST_ID, request_id)
    wait = tracing.start_span(
        "switchyard.queue_wait",
        attributes={**_task_attributes(task), "messaging.destination.name": queue},
        start_time_ns=claimed_ns - waited_ns,
        parent=tracing.remote_parent(run) or run,
    )
    if wait is not None:
        wait.end(end_time=claimed_ns)


def provider_call(task: AITask, model: str) -> AbstractContextManager[None]:
    """The provider span around one call of ``model`` (current inside the block, so the
    SDK's own spans are its children); left open for ``attempt_finished``."""
    return _provider_call(task, model) if tracing.enabled() else _OFF


@contextmanager
def _provider_call(task: AITask, model: str) -> Iterator[None]:
    provider = _PROVIDER_NAMES.get(settings.LLM_PROVIDER, settings.LLM_PROVIDER)
    span = tracing.start_span(
        f"chat {model}",
        kind="client",
        attributes={
            OPERATION: "chat",
            PROVIDER: provider,
            REQUEST_MODEL: model,
            REQUEST_MAX_TOKENS: task.max_tokens,
            **_task_attributes(task),
            ATTEMPT: task.attempts,
        },
    )
    if span is None:
        yield
        return
    call = _Call(span)
    _local.call = call
    try:
        with tracing.use(span):
            yield
    except BaseException as exc:
        span.set_attribute(ERROR_TYPE, getattr(exc, "code", None) or getattr(exc, "reason", None) or type(exc).__name__)
        raise
    finally:
        call.ended_ns = time.time_ns()
        span.set_attribute(DELTAS, call.deltas)


def call_completed(completion: Completion) -> None:
    """What the provider answered: the served model and the usage."""
    call: _Call | None = getattr(_local, "call", None)
    if call is None:
        return
    call.span.set_attributes(
        {
            RESPONSE_MODEL: completion.model,
            FINISH_REASONS: [completion.finish_reason],
            INPUT_TOKENS: completion.input_tokens,
            OUTPUT_TOKENS: completion.output_tokens,
        }
    )


def attempt_finished(task: AITask, *, outcome: str) -> None:
    """The attempt is over (settled, failed, handed back): the cost it was charged goes on
    the provider span, which ends at the time the call ended."""
    run = tracing.current_span()
    if run is not None:
        run.set_attribute(OUTCOME, outcome)
    call: _Call | None = getattr(_local, "call", None)
    _local.call = None
    if call is None:
        return
    call.span.set_attribute(COST_USD, float(_charged(task, outcome)))
    call.span.end(end_time=call.ended_ns)


def _charged(task: AITask, outcome: str) -> Any:
    """What this attempt was charged: a done one was read back after settling; a cancelled
    one charged what the provider produced; every other outcome charged nothing."""
    if outcome == "done":
        return task.cost_usd
    if outcome != "cancelled":
        return 0
    from llm.models import AITask

    return AITask.objects.filter(id=task.id).values_list("cost_usd", flat=True).first() or 0


def stream_publish(task_id: UUID | str, event: str) -> AbstractContextManager[None]:
    """One SSE event appended to the task's stream, as a producer span; a chunk of the answer
    is counted on the provider span instead, and its Redis command is not traced."""
    return _stream_publish(task_id, event) if tracing.enabled() else _OFF


@contextmanager
def _stream_publish(task_id: UUID | str, event: str) -> Iterator[None]:
    if event == "delta":
        call: _Call | None = getattr(_local, "call", None)
        if call is not None:
            call.deltas += 1
        with tracing.quiet():
            yield
        return
    attributes = {
        "messaging.system": "redis",
        "messaging.operation.type": "send",
        "messaging.destination.name": "task-events",
        "switchyard.sse.event": event,
        TASK_ID: str(task_id),
    }
    with tracing.span("publish task-events", kind="producer", attributes=attributes):
        yield
