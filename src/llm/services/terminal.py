"""What every path into a terminal state (done, failed, cancelled; worker, cancel, cache
hit, sweeper) does inside its transaction: the ``AITaskFinished`` outbox event now and,
after commit, the SSE ``status`` event and (with a callback URL) the webhook."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from contracts.events import AITaskFinished
from kernel import services as kernel
from llm import streams
from llm.models import AITask
from llm.services.mapping import duration_seconds
from llm.services.webhooks import enqueue_webhook


def announce_terminal(task: AITask) -> None:
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
    transaction.on_commit(lambda: streams.publish_status(task))


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
