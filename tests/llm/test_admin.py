"""Admin screens of the llm context: filters render, failed tasks re-run, dead letters replay."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from llm import services
from llm.models import AITask, DeadLetter
from users.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ops@switchyard.test", "pw"))
    return client


def failed_task(tenant, settings) -> str:
    settings.TASK_MAX_ATTEMPTS = 1
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "Down once #fake:error=503:1"}, format="json")
    task_id = response.json()["id"]
    assert services.task_execute(task_id=uuid.UUID(task_id)).kind == "failed"
    return task_id


def test_task_and_dead_letter_lists_render_with_filters(admin_client, tenant, settings) -> None:
    failed_task(tenant, settings)
    assert admin_client.get("/admin/llm/aitask/?status__exact=failed").status_code == 200
    assert admin_client.get("/admin/llm/deadletter/").status_code == 200
    assert admin_client.get("/admin/analytics/taskoutcome/").status_code == 200


def test_rerun_failed_action_requeues_with_a_fresh_reservation(admin_client, tenant, settings) -> None:
    task_id = failed_task(tenant, settings)
    old_reservation = AITask.objects.get(id=task_id).reservation_id
    response = admin_client.post(
        "/admin/llm/aitask/", {"action": "rerun_failed", "_selected_action": [task_id]}, follow=True
    )
    assert "Re-queued 1 task(s)." in response.content.decode()
    task = AITask.objects.get(id=task_id)
    assert task.status == "pending" and task.attempts == 0
    assert task.reservation_id not in (None, old_reservation)
    assert DeadLetter.objects.get(task_id=uuid.UUID(task_id)).replayed_at is not None


def test_replay_action_runs_the_dead_letter_once(admin_client, tenant, settings) -> None:
    task_id = failed_task(tenant, settings)
    letter = DeadLetter.objects.get(task_id=uuid.UUID(task_id))
    for _ in range(2):  # the second replay finds it already replayed and does nothing
        admin_client.post("/admin/llm/deadletter/", {"action": "replay", "_selected_action": [letter.pk]})
    assert AITask.objects.get(id=task_id).status == "pending"
    settings.TASK_MAX_ATTEMPTS = 3
    # Attempts start again from 1, so the directive's one failure happens again.
    assert services.task_execute(task_id=uuid.UUID(task_id)).kind == "retry"
