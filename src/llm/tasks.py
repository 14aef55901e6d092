"""Celery entry points of the llm context: ids in, a service call, retries here."""

from __future__ import annotations

from dataclasses import asdict
from uuid import UUID

from celery import Task, shared_task

from llm import services


@shared_task(bind=True, name="llm.run_ai_task", ignore_result=True)
def run_ai_task(self: Task[[str], str], task_id: str) -> str:
    outcome = services.task_execute(task_id=UUID(task_id))
    if outcome.kind == "retry":
        # Attempts are counted in the database; Celery's own counter is not the cap.
        raise self.retry(countdown=outcome.countdown, queue=outcome.queue or "default", max_retries=None)
    return outcome.kind


# max_retries=None on the task: unlimited for Celery. (On `self.retry` it would mean "the
# task's default", 3, and the webhook would stop after 4 attempts.) The cap is
# WEBHOOK_MAX_ATTEMPTS, counted in the database by the claim.
@shared_task(bind=True, name="llm.deliver_webhook", ignore_result=True, max_retries=None)
def deliver_webhook(self: Task[[str], str], task_id: str) -> str:
    outcome = services.webhook_deliver(task_id=UUID(task_id))
    if outcome.kind == "retry":
        raise self.retry(countdown=outcome.countdown)
    return outcome.kind


@shared_task(name="llm.sweep_tasks", ignore_result=True)
def sweep_tasks() -> dict[str, int]:
    return asdict(services.tasks_sweep())
