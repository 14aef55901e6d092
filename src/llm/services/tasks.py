"""Reading AI tasks (one, a page, several by id) and cancelling one."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

import structlog
from celery import current_app
from django.db import transaction
from django.utils import timezone

from billing import services as billing
from contracts.llm import AITask as AITaskContract
from contracts.llm import AITaskPage, AITaskSummary
from kernel.errors import ConflictError, NotFoundError
from llm import selectors, streams
from llm.limits import task_token_estimate
from llm.models import AITask
from llm.services.mapping import to_summary, to_task
from llm.services.terminal import announce_terminal
from users import services as users

log = structlog.get_logger(__name__)


class TaskNotFound(NotFoundError):
    default_detail = "AI task not found."


class TaskNotCancellable(ConflictError):
    code = "task_not_cancellable"
    default_detail = "The task has already finished."


def task_get(*, organization_id: UUID, task_id: UUID) -> AITaskContract:
    task = selectors.task_find(organization_id=organization_id, task_id=task_id)
    if task is None:
        raise TaskNotFound()
    return to_task(task)


def task_list(
    *, organization_id: UUID, status: str | None = None, cursor: str | None = None, limit: int = 20
) -> AITaskPage:
    rows, next_cursor = selectors.task_page(organization_id=organization_id, status=status, cursor=cursor, limit=limit)
    return AITaskPage(results=[to_summary(row) for row in rows], next_cursor=next_cursor)


def tasks_get_many(*, organization_id: UUID, task_ids: Iterable[UUID]) -> dict[UUID, AITaskSummary]:
    """The organization's tasks among ``task_ids``, by id, in one query that does not load
    their input (unknown ids are absent). The chat context reads its turns' tasks with it."""
    ids = list(task_ids)
    if not ids:
        return {}
    return {row.id: to_summary(row) for row in selectors.task_many(organization_id=organization_id, task_ids=ids)}


def task_cancel(*, organization_id: UUID, task_id: UUID) -> AITaskContract:
    """Cancel an open task. A pending one is released at once; a worker running one stops
    its call (it polls the cancel flag) and settles what the provider produced."""
    with billing.budget_transaction():  # the budget rows last, with the COMMIT
        # TaskNotFound / TaskNotCancellable raise before anything is deferred.
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
        estimated=task_token_estimate(prompt=task.prompt, messages=task.messages, max_tokens=task.max_tokens),
        actual=task.input_tokens + task.output_tokens,
    )


def _after_cancel(task: AITask) -> None:
    streams.mark_cancelled(task.id)
    try:  # a message still waiting in the broker will not start
        current_app.control.revoke(str(task.id), terminate=False)
    except Exception:
        log.warning("revoke_failed", task_id=str(task.id), exc_info=True)
