"""Celery entry points of the llm context: ids in, a service call, nothing else.

AI tasks do not use Celery's retry: a retry goes back to ``pending`` with a due time in
PostgreSQL and the dispatch gate sends it again (attempts are counted there). The worker
signals below start the process's keeper (leases, deadlines, cancel, the gate's fill).
"""

from __future__ import annotations

import os
from typing import Any
from uuid import UUID

from celery import Task, shared_task, signals

from llm import services


@shared_task(name="llm.run_ai_task", ignore_result=True)
def run_ai_task(task_id: str) -> str:
    return services.task_execute(task_id=UUID(task_id)).kind


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
    return services.tasks_sweep().model_dump()


@signals.worker_ready.connect
def _serve_pool(sender: Any = None, **_: Any) -> None:
    """The worker is consuming: announce its slots to the dispatch gate, start the keeper."""
    if sender is None:
        return
    queues = [queue.name for queue in sender.task_consumer.queues]
    slots = int(getattr(sender.controller, "concurrency", 1) or 1)
    services.worker_serve(queues=queues, slots=slots, node=f"{sender.hostname}:{os.getpid()}")


@signals.worker_shutdown.connect
def _leave_pool(**_: Any) -> None:
    services.worker_leave()
