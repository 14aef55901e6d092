"""The dashboard: session login, scoped to the organizations a person may see."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from tests.analytics.test_summary import seed

pytestmark = pytest.mark.django_db


def member_client(tenant: Any) -> Client:
    user = get_user_model().objects.get(memberships__organization_id=tenant.organization_id)
    client = Client()
    client.force_login(user)
    return client


def page_data(html: str) -> dict[str, Any]:
    match = re.search(r'<script id="dashboard-data" type="application/json">(.*?)</script>', html, re.S)
    assert match, html
    return dict(json.loads(match[1]))


def test_the_dashboard_needs_a_session_login() -> None:
    response = Client().get("/dashboard/")
    assert response.status_code == 302
    assert response["Location"] == "/dashboard/login/?next=/dashboard/"


def test_a_member_sees_their_organization_and_not_another(tenant: Any, make_tenant: Callable[..., Any]) -> None:
    other = make_tenant()
    seed(uuid.UUID(tenant.organization_id), uuid.UUID(other.organization_id))
    client = member_client(tenant)
    response = client.get("/dashboard/")
    assert response.status_code == 200
    data = page_data(response.content.decode())
    assert len(data["days"]) == 30
    # The last 30 days hold all seven of its outcomes (seeded about ten days ago).
    assert data["status"] == {"done": 5, "failed": 1, "cancelled": 1}
    assert sum(data["cost"]) == pytest.approx(10.0109)
    assert data["cumulative_cost"][-1] == pytest.approx(10.0109)
    assert [q["queue"] for q in data["queues"]] == ["priority", "default", "low"]
    assert data["budget"]["limit"] == 100.0
    assert client.get(f"/dashboard/?org={other.organization_id}").status_code == 404
    assert client.get("/dashboard/?org=not-a-uuid").status_code == 404
    assert client.get(f"/dashboard/?org={tenant.organization_id}").status_code == 200


def test_staff_may_pick_any_organization(make_tenant: Callable[..., Any]) -> None:
    first, second = make_tenant(), make_tenant()
    staff = get_user_model().objects.create_user(email="ops@switchyard.test", password="x", is_staff=True)
    client = Client()
    client.force_login(staff)
    html = client.get(f"/dashboard/?org={second.organization_id}").content.decode()
    assert f'value="{second.organization_id}" selected' in html
    assert f'value="{first.organization_id}"' in html
    assert "all organizations" in html


def test_a_user_without_organization_is_refused() -> None:
    loner = get_user_model().objects.create_user(email="loner@switchyard.test", password="x")
    client = Client()
    client.force_login(loner)
    assert client.get("/dashboard/").status_code == 403


def test_queue_depth_counts_pending_tasks_per_queue_for_the_members_organization(
    tenant: Any, make_tenant: Callable[..., Any]
) -> None:
    other = make_tenant()
    for client, priority in (
        (tenant.client, "low"),
        (tenant.client, "low"),
        (tenant.client, "high"),
        (other.client, "low"),
    ):
        response = client.post(
            "/api/v1/ai-tasks/", {"prompt": "Wait in the queue", "priority": priority}, format="json"
        )
        assert response.status_code == 202  # no worker runs: they stay pending, held at the gate
    queues = {q["queue"]: q for q in page_data(member_client(tenant).get("/dashboard/").content.decode())["queues"]}
    assert {name: (q["pending"], q["held"]) for name, q in queues.items()} == {
        "priority": (1, 1),
        "default": (0, 0),
        "low": (2, 2),
    }
