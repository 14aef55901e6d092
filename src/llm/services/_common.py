"""Private helpers of the llm services: the mapper, the SSE snapshot, dispatch, the
finished event. The one place where an ``AITask`` row becomes a contract object."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import structlog
from celery import current_app
from django.db import transaction
from django.utils import timezone

from contracts.events import AITaskFinished
from contracts.llm import QUEUE_FOR_PRIORITY
from contracts.llm import AITask as AITaskContract
from kernel import services as kernel
from llm import streams
from llm.models import AITask

log = structlog.get_logger(__name__)
RUN_TASK = "llm.run_ai_task"


def duration_seconds(task: AITask) -> float | None:
    if task.started_at is None or task.completed_at is None:
        return None
    return round((task.completed_at - task.started_at).total_seconds(), 3)


def to_task(task: AITask) -> AITaskContract:
    return AITaskContract(
        id=task.id,
        organization_id=task.organization_id,
        status=task.status,
        priority=task.priority,
        model=task.model,
        prompt=task.prompt,
        max_tokens=task.max_tokens,
        result=task.result,
        error=task.error,
        error_code=task.error_code,
        cached=task.cached,
        input_tokens=task.input_tokens,
        output_tokens=task.output_tokens,
        cost_usd=task.cost_usd,
        attempts=task.attempts,
        created_at=task.created_at,
        started_at=task.started_at,
        completed_at=task.completed_at,
        duration_seconds=duration_seconds(task),
        metadata=task.metadata,
        callback_url=task.callback_url,
        served_model=task.served_model,
    )


def status_payload(task: AITask | AITaskContract) -> dict[str, Any]:
    """What an SSE ``status`` event carries (no prompt: it may be large)."""
    return {
        "id": str(task.id),
        "status": task.status,
        "attempts": task.attempts,
        "result": task.result,
        "error": task.error,
        "cached": task.cached,
        "input_tokens": task.input_tokens,
        "output_tokens": task.output_tokens,
        "cost_usd": format(task.cost_usd, "f"),  # "0.0000000000", never "0E-10"
    }


def publish_status(task: AITask) -> None:
    streams.publish(task.id, "status", status_payload(task))


def queue_for(priority: str) -> str:
    return QUEUE_FOR_PRIORITY[priority]


def dispatch(task_id: UUID, priority: str, *, countdown: float | None = None) -> bool:
    """Send the task to its queue. A broker outage is logged, not raised: the task stays
    ``pending`` and the sweeper dispatches it again."""
    try:
        current_app.send_task(
            RUN_TASK, args=[str(task_id)], task_id=str(task_id), queue=queue_for(priority), countdown=countdown
        )
    except Exception as exc:  # kombu raises a variety of connection errors
        log.warning("dispatch_failed", task_id=str(task_id), error=type(exc).__name__)
        return False
    return True


DELIVER_WEBHOOK = "llm.deliver_webhook"


def announce_terminal(task: AITask) -> None:
    """What every path into a terminal state does inside its transaction: the outbox
    event now; after commit, the SSE status and (with a callback URL) the webhook."""
    kernel.event_publish(finished_event(task))
    if task.callback_url:
        # A fresh delivery (also after a re-run whose earlier webhook was dead-lettered).
        AITask.objects.filter(pk=task.pk).update(
            webhook_status=AITask.WebhookStatus.PENDING,
            webhook_attempts=0,
            webhook_next_at=None,
            webhook_claimed_until=None,
        )
        transaction.on_commit(lambda: enqueue_webhook(task.id))
    transaction.on_commit(lambda: publish_status(task))


def enqueue_webhook(task_id: UUID, *, countdown: float | None = None) -> None:
    try:
        current_app.send_task(DELIVER_WEBHOOK, args=[str(task_id)], countdown=countdown)
    except Exception as exc:  # the sweeper picks up webhooks left pending
        log.warning("webhook_enqueue_failed", task_id=str(task_id), error=type(exc).__name__)


def finished_event(task: AITask) -> AITaskFinished:
    return AITaskFinished(
        occurred_at=timezone.now(),
        task_id=task.id,
        organization_id=task.organization_id,
        api_key_id=task.api_key_id,
        status=task.status,
        model=task.model,
        priority=task.priority,
        cached=task.cached,
        attempts=task.attempts,
        input_tokens=task.input_tokens,
        output_tokens=task.output_tokens,
        cost_usd=task.cost_usd,
        error_code=task.error_code,
        created_at=task.created_at,
        started_at=task.started_at,
        completed_at=task.completed_at or timezone.now(),
        duration_seconds=duration_seconds(task),
    )
