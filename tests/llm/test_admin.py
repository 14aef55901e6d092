"""Admin screens of the llm context: filters narrow the rows, failed tasks re-run, dead
letters replay once, task rows stay read-only on POST, dispatch policies are edited."""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import pytest
from django.core.paginator import UnorderedObjectListWarning
from django.test import Client

from billing import services as billing
from llm import services
from llm.models import AITask, DeadLetter, DispatchPolicy
from tests.factories import AITaskFactory
from users.models import User

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ops@switchyard.test", "pw"))
    return client


def submit(tenant, prompt: str, **body: Any) -> str:
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": prompt, **body}, format="json")
    assert response.status_code == 202, response.json()
    return str(response.json()["id"])


def failed_task(tenant, settings, prompt: str = "Down once #fake:error=503:1") -> str:
    settings.TASK_MAX_ATTEMPTS = 1
    task_id = submit(tenant, prompt)
    assert services.task_execute(task_id=uuid.UUID(task_id)).kind == "failed"
    return task_id


def done_task(tenant) -> str:
    task_id = submit(tenant, "Fine today #fake:tokens=10,20")
    assert services.task_execute(task_id=uuid.UUID(task_id)).kind == "done"
    return task_id


def rows(response) -> list[Any]:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def sidebar(response) -> set[str]:
    """The fields the changelist offers filters for."""
    return {spec.field_path for spec in response.context["cl"].filter_specs}


def notes(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def reserved(tenant):
    return billing.budget_status(organization_id=uuid.UUID(tenant.organization_id)).reserved_usd


def test_task_filters_narrow_the_rows(admin_client) -> None:
    failed, done = str(AITaskFactory.create(failed=True).id), str(AITaskFactory.create(done=True).id)
    urgent = str(AITaskFactory.create(priority="high").id)
    changelist = admin_client.get("/admin/llm/aitask/")
    assert {str(task.id) for task in rows(changelist)} == {failed, done, urgent}
    assert sidebar(changelist) >= {"status", "priority", "model", "cached", "created_at"}
    assert [str(t.id) for t in rows(admin_client.get("/admin/llm/aitask/?status__exact=failed"))] == [failed]
    assert [str(t.id) for t in rows(admin_client.get("/admin/llm/aitask/?status__exact=done"))] == [done]
    assert [str(t.id) for t in rows(admin_client.get("/admin/llm/aitask/?priority__exact=high"))] == [urgent]
    assert [str(t.id) for t in rows(admin_client.get(f"/admin/llm/aitask/?q={failed}"))] == [failed]


def test_dead_letter_filter_separates_replayed_from_waiting(admin_client, tenant, settings) -> None:
    first = failed_task(tenant, settings, "Down once #fake:error=503:1")
    second = failed_task(tenant, settings, "Down again #fake:error=500:1")
    services.dead_letter_replay(dead_letter_id=DeadLetter.objects.get(task_id=uuid.UUID(first)).pk)
    assert sidebar(admin_client.get("/admin/llm/deadletter/")) == {"replayed_at", "created_at"}
    waiting = rows(admin_client.get("/admin/llm/deadletter/?replayed_at__isnull=True"))
    replayed = rows(admin_client.get("/admin/llm/deadletter/?replayed_at__isnull=False"))
    assert [str(letter.task_id) for letter in waiting] == [second]
    assert [str(letter.task_id) for letter in replayed] == [first]
    assert admin_client.get("/admin/analytics/taskoutcome/").status_code == 200


def test_rerun_failed_action_requeues_only_the_failed_with_a_fresh_reservation(admin_client, tenant, settings) -> None:
    task_id, done = failed_task(tenant, settings), done_task(tenant)
    old_reservation = AITask.objects.get(id=task_id).reservation_id
    assert reserved(tenant) == 0
    response = admin_client.post(
        "/admin/llm/aitask/", {"action": "rerun_failed", "_selected_action": [task_id, done]}, follow=True
    )
    assert notes(response) == ["Re-queued 1 task(s)."]  # the done task is left out, without a warning
    task = AITask.objects.get(id=task_id)
    assert task.status == "pending" and task.attempts == 0 and task.error is None
    assert task.reservation_id not in (None, old_reservation) and reserved(tenant) > 0
    assert DeadLetter.objects.get(task_id=uuid.UUID(task_id)).replayed_at is not None
    assert AITask.objects.get(id=done).status == "done"


def test_replay_action_runs_the_dead_letter_once(admin_client, tenant, settings) -> None:
    task_id = failed_task(tenant, settings)
    letter = DeadLetter.objects.get(task_id=uuid.UUID(task_id))
    first = admin_client.post(
        "/admin/llm/deadletter/", {"action": "replay", "_selected_action": [letter.pk]}, follow=True
    )
    assert notes(first) == ["Replayed 1 dead letter(s)."]
    held = reserved(tenant)
    assert held > 0 and AITask.objects.get(id=task_id).status == "pending"
    letter.refresh_from_db()
    assert letter.replayed_at is not None
    # The second replay finds it already replayed and does nothing: no second reservation.
    again = admin_client.post(
        "/admin/llm/deadletter/", {"action": "replay", "_selected_action": [letter.pk]}, follow=True
    )
    assert notes(again) == ["Replayed 0 dead letter(s)."]
    assert reserved(tenant) == held
    settings.TASK_MAX_ATTEMPTS = 3
    # Attempts start again from 1, so the directive's one failure happens again.
    assert services.task_execute(task_id=uuid.UUID(task_id)).kind == "retry"


def test_task_and_dead_letter_rows_stay_read_only_on_post(admin_client, tenant, settings) -> None:
    task_id = failed_task(tenant, settings)
    fields = [field.name for field in AITask._meta.fields if field.name != "updated_at"]
    before = AITask.objects.filter(id=task_id).values(*fields).get()
    url = f"/admin/llm/aitask/{task_id}/change/"
    page = admin_client.get(url).content.decode()
    for field in ("status", "result", "cost_usd", "attempts", "prompt"):
        assert f'name="{field}"' not in page
    forged = {"status": "done", "result": "forged", "cost_usd": "0", "attempts": "0", "prompt": "other"}
    admin_client.post(url, forged)
    assert AITask.objects.filter(id=task_id).values(*fields).get() == before
    assert admin_client.get("/admin/llm/aitask/add/").status_code == 403

    letter = DeadLetter.objects.get(task_id=uuid.UUID(task_id))
    url = f"/admin/llm/deadletter/{letter.pk}/change/"
    assert 'name="reason"' not in admin_client.get(url).content.decode()
    admin_client.post(url, {"reason": "forged", "attempts": "9"})
    letter.refresh_from_db()
    assert (letter.reason, letter.attempts) != ("forged", 9) and letter.replayed_at is None
    assert admin_client.get("/admin/llm/deadletter/add/").status_code == 403


def test_dispatch_policy_is_added_found_and_changed(admin_client, make_tenant) -> None:
    alice, bob = make_tenant(org="Alice Rail"), make_tenant(org="Bob Freight")
    # The organization is chosen with the autocomplete widget, which searches by name and
    # pages its answers (20 a page): unordered pages could repeat or skip organizations.
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnorderedObjectListWarning)
        found = admin_client.get(
            "/admin/autocomplete/",
            {"app_label": "llm", "model_name": "dispatchpolicy", "field_name": "organization", "term": "Alice"},
        ).json()
    assert [result["id"] for result in found["results"]] == [alice.organization_id]
    for tenant, cap in ((alice, "2"), (bob, "5")):
        response = admin_client.post(
            "/admin/llm/dispatchpolicy/add/", {"organization": tenant.organization_id, "max_in_flight": cap}
        )
        assert response.status_code == 302, response.content.decode()[:2000]
    caps = dict(DispatchPolicy.objects.values_list("organization__name", "max_in_flight"))
    assert caps == {"Alice Rail": 2, "Bob Freight": 5}
    [policy] = rows(admin_client.get("/admin/llm/dispatchpolicy/?q=Bob"))
    assert policy.organization.name == "Bob Freight"
    url = f"/admin/llm/dispatchpolicy/{policy.pk}/change/"
    assert admin_client.post(url, {"organization": bob.organization_id, "max_in_flight": "0"}).status_code == 302
    assert DispatchPolicy.objects.get(pk=policy.pk).max_in_flight == 0
    # One policy per organization: a second one for Bob is refused, not a 500.
    duplicate = admin_client.post(
        "/admin/llm/dispatchpolicy/add/", {"organization": bob.organization_id, "max_in_flight": "1"}
    )
    assert duplicate.status_code == 200 and DispatchPolicy.objects.count() == 2
