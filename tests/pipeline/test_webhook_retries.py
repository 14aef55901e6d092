"""Webhook retries through a real Celery worker (the `priority` pool delivers webhooks):
Celery's own retry counter must not cap the attempts; WEBHOOK_MAX_ATTEMPTS (default 6)
does, and the last one dead-letters the webhook."""

from __future__ import annotations

import time

import pytest

from llm.models import AITask, DeadLetter
from tests.llm.test_webhooks import Receiver
from tests.pipeline.conftest import wait_for

pytestmark = pytest.mark.slow


def test_always_failing_receiver_is_dead_lettered_after_exactly_6_attempts(tenant, start_worker, settings) -> None:
    assert settings.WEBHOOK_MAX_ATTEMPTS == 6  # the production default; only the backoff is short here
    settings.WEBHOOK_ALLOW_PRIVATE = True  # the submit check, in this process
    receiver = Receiver()
    receiver.statuses = [500] * 50
    try:
        # Loopback receiver: private destinations allowed in the worker, backoff 0.2 s doubling to 1 s.
        start_worker("default")
        webhooks = start_worker(
            "priority", WEBHOOK_ALLOW_PRIVATE="true", WEBHOOK_RETRY_BACKOFF_S="0.2", WEBHOOK_RETRY_BACKOFF_MAX_S="1"
        )
        response = tenant.client.post(
            "/api/v1/ai-tasks/", {"prompt": "Tell me #fake:tokens=2,2", "callback_url": receiver.url}, format="json"
        )
        task_id = response.json()["id"]
        wait_for(lambda: AITask.objects.get(id=task_id).webhook_status == "failed", timeout=60)
        time.sleep(2)  # room for a seventh attempt, which must not come
    finally:
        receiver.server.shutdown()
    task = AITask.objects.get(id=task_id)
    assert (task.status, task.webhook_attempts, task.webhook_last_error) == ("done", 6, "HTTP 500")
    assert len(receiver.requests) == 6
    letter = DeadLetter.objects.get(task_id=task_id, kind="webhook")
    assert letter.attempts == 6
    assert "MaxRetriesExceededError" not in webhooks.log_path.read_text()
