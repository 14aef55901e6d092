"""Running a failed task again (admin action, dead-letter replay) and delivering a
dead-lettered webhook again. Staff actions: no organization scope, no API route."""

from __future__ import annotations

from uuid import UUID

from django.db import transaction
from django.utils import timezone

from billing import services as billing
from contracts.billing import ReservationRequest
from contracts.llm import AITask as AITaskContract
from kernel.errors import ConflictError, NotFoundError
from llm.limits import input_token_estimate, task_token_estimate
from llm.models import AITask, DeadLetter
from llm.services.dispatch import send
from llm.services.mapping import to_task
from llm.services.tasks import TaskNotFound
from llm.services.webhooks import enqueue_webhook
from users import services as users


class TaskNotRerunnable(ConflictError):
    code = "task_not_rerunnable"
    default_detail = "Only failed tasks can be re-run."


def task_rerun(*, task_id: UUID) -> AITaskContract:
    """Run a failed task again from scratch: a new budget reservation, attempts reset,
    dispatched after commit."""
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
                estimated_input_tokens=input_token_estimate(prompt=task.prompt, messages=task.messages),
                max_output_tokens=task.max_tokens,
                fallback_models=list(task.fallback_models),
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
        transaction.on_commit(lambda: send(task.id, task.priority))
        # Counted without a check (staff asked for it); the worker corrects it on settling.
        transaction.on_commit(
            lambda: users.token_usage_correct(
                organization_id=task.organization_id,
                api_key_id=task.api_key_id,
                estimated=0,
                actual=task_token_estimate(prompt=task.prompt, messages=task.messages, max_tokens=task.max_tokens),
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
