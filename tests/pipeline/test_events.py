"""The outbox end to end: a task finishes on a worker, its event is relayed after commit
and analytics records it, on the queues the routes name."""

from __future__ import annotations

import json

import pytest

from analytics.models import TaskOutcome
from kernel.models import OutboxEvent
from llm.models import AITask
from tests.pipeline.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_finished_task_reaches_analytics_through_the_outbox(tenant, workers) -> None:
    response = tenant.client.post(
        "/api/v1/ai-tasks/", {"prompt": "Count me in analytics #fake:tokens=7,9"}, format="json"
    )
    task_id = response.json()["id"]
    outcome = wait_for(lambda: TaskOutcome.objects.filter(task_id=task_id).first(), timeout=40)
    assert isinstance(outcome, TaskOutcome)
    assert (outcome.status, outcome.input_tokens, outcome.output_tokens) == ("done", 7, 9)
    assert OutboxEvent.objects.get(payload__task_id=task_id).published_at is not None
    assert "kernel.relay_outbox" in workers["priority"].log_path.read_text()
    assert "kernel.handle_events[" in workers["low"].log_path.read_text()  # one message per subscriber and batch


def test_webhook_is_delivered_by_the_priority_pool(tenant, start_worker, settings) -> None:
    from tests.llm.test_webhooks import Receiver

    settings.WEBHOOK_ALLOW_PRIVATE = True
    receiver = Receiver()
    try:
        start_worker("default")
        start_worker("priority", WEBHOOK_ALLOW_PRIVATE="true")
        response = tenant.client.post(
            "/api/v1/ai-tasks/", {"prompt": "Call me back when done", "callback_url": receiver.url}, format="json"
        )
        task_id = response.json()["id"]
        wait_for(lambda: AITask.objects.get(id=task_id).webhook_status == "delivered", timeout=40)
        assert [json.loads(body)["status"] for _, body in receiver.requests] == ["done"]
    finally:
        receiver.server.shutdown()
