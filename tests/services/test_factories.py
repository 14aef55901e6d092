"""The factories in tests/factories.py build rows the services accept as their own: a
key authenticates, a task's reservation is held in its budget and released when it
ends, an expired lease is swept back to the gate."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from billing import services as billing
from llm import services
from llm.models import AITask
from tests.factories import AITaskFactory, ApiKeyFactory, OrganizationFactory, ReservationFactory
from users import services as users

pytestmark = pytest.mark.django_db


def test_an_issued_key_authenticates_and_reads_its_organizations_tasks() -> None:
    issued = ApiKeyFactory.create(organization_name="Factory Rail")
    principal = users.api_key_authenticate(raw_key=issued.key)
    assert principal.organization_id == issued.info.organization_id
    org = OrganizationFactory.create(name="Factory Rail")  # get-or-create by name: the same row
    assert org.id == issued.info.organization_id
    task = AITaskFactory.create(organization=org, api_key_id=issued.info.id)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.key}")
    body = client.get(f"/api/v1/ai-tasks/{task.id}/").json()
    assert (body["id"], body["status"]) == (str(task.id), "pending")


def test_an_open_task_holds_its_estimate_and_cancel_releases_it() -> None:
    task = AITaskFactory.create()
    status = billing.budget_status(organization_id=task.organization_id)
    assert task.reservation_id is not None and status.reserved_usd > 0
    services.task_cancel(organization_id=task.organization_id, task_id=task.id)
    assert billing.budget_status(organization_id=task.organization_id).reserved_usd == 0
    ended = AITaskFactory.create(done=True)
    assert ended.reservation_id is None and ended.completed_at is not None


def test_a_task_with_an_expired_lease_is_swept_back_to_the_gate() -> None:
    task = AITaskFactory.create(lease_expired=True)
    assert services.tasks_sweep().lease_expired == 1
    row = AITask.objects.get(id=task.id)
    assert (row.status, row.lease_token, row.dispatched_at) == ("pending", None, None)


def test_a_reservation_moves_the_budget_and_settles() -> None:
    org = OrganizationFactory.create()
    held = ReservationFactory.create(organization_id=org.id)
    assert billing.budget_status(organization_id=org.id).reserved_usd == held.amount_usd > 0
    billing.reservation_release(reservation_id=held.id)
    assert billing.budget_status(organization_id=org.id).reserved_usd == 0
