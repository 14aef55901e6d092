"""LLM contracts: submitting AI tasks and reading them back."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

from contracts.base import Contract

TaskStatus = Literal["pending", "processing", "done", "failed", "cancelled"]
TaskPriority = Literal["high", "normal", "low"]
QueueName = Literal["priority", "default", "low"]
OPEN_STATUSES: tuple[TaskStatus, ...] = ("pending", "processing")
TERMINAL_STATUSES: tuple[TaskStatus, ...] = ("done", "failed", "cancelled")
QUEUE_FOR_PRIORITY: dict[str, str] = {"high": "priority", "normal": "default", "low": "low"}


class ChatMessage(Contract):
    """One message of a conversation as the provider receives it."""

    role: Literal["system", "user", "assistant"]
    content: str


class TaskSubmission(Contract):
    """A validated request for AI work (limits are enforced by the API serializer).

    ``messages`` (optional) is the whole conversation the provider receives: an optional
    leading ``system`` message, then ``user``/``assistant`` turns ending with the user's
    message; ``prompt`` is then that last user message. ``fallback_models`` are tried in
    order when a call to ``model`` fails with a retryable error."""

    organization_id: UUID
    api_key_id: UUID | None
    prompt: str
    model: str
    priority: TaskPriority = "normal"
    max_tokens: int = 1024
    metadata: dict[str, Any] = {}
    callback_url: str | None = None
    use_cache: bool = True
    request_id: str | None = None
    messages: list[ChatMessage] | None = None
    fallback_models: list[str] = []


class AITaskSummary(Contract):
    """An AI task without its input (prompt and messages can be large): what lists and
    batch reads return; their queries never load those columns."""

    id: UUID
    organization_id: UUID
    status: TaskStatus
    priority: TaskPriority
    model: str
    max_tokens: int
    result: str | None
    error: str | None
    error_code: str | None
    cached: bool
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    attempts: int
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    duration_seconds: float | None
    metadata: dict[str, Any]
    callback_url: str | None
    # The model of the current attempt; once done, the model that answered (a fallback
    # model when the first one failed). Empty until the first attempt.
    served_model: str = ""


class AITask(AITaskSummary):
    """One AI task, its prompt included (a single read, a submit, a cancel)."""

    prompt: str


class AITaskPage(Contract):
    results: list[AITaskSummary]
    next_cursor: str | None


class QueueDepth(Contract):
    """AI tasks waiting (``pending``) for one queue, and how many of them the dispatch
    gate still holds in PostgreSQL (not yet handed to the broker)."""

    queue: QueueName
    priority: TaskPriority
    pending: int
    held: int


class QueueStats(Contract):
    """One queue as ``/metrics`` sees it, from PostgreSQL (the gate keeps the broker short)."""

    queue: QueueName
    held: int  # pending, waiting at the gate (dispatched_at NULL)
    sent: int  # pending, in the broker or a worker's prefetch
    processing: int
    oldest_pending_age_s: float  # 0 when nothing due is waiting

    @property
    def depth(self) -> int:
        return self.held + self.sent


# -- what the worker-side services report back to their Celery entry points -----------


class ExecutionOutcome(Contract):
    """How one run of ``task_execute`` ended, for the Celery task and the metrics."""

    kind: Literal["done", "failed", "retry", "skipped", "discarded", "cancelled"]
    countdown: float | None = None
    queue: QueueName | None = None
    code: str | None = None  # the error code of a failure or a retry (metrics)


class WebhookOutcome(Contract):
    """How one delivery attempt of a task's webhook ended; ``retry`` carries the countdown."""

    kind: Literal["delivered", "retry", "failed", "skipped"]
    countdown: float | None = None


class FillReport(Contract):
    """One pass of the dispatch gate over a queue: its window, the messages outstanding
    before the pass (-1 when another process held the queue's lock) and how many it sent."""

    queue: str
    window: int
    outstanding: int
    sent: int


class SweepReport(Contract):
    """What one sweep repaired (``llm.sweep_tasks`` every SWEEPER_INTERVAL_S)."""

    redispatched: int = 0
    lease_expired: int = 0
    failed: int = 0
    reservations_released: int = 0
    webhooks_requeued: int = 0
    expired: int = 0
    errors: int = 0
