"""Admin screens of analytics: outcomes (by month) and exports render, read-only."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from analytics import services
from tests.analytics.test_partitions import event
from tests.analytics.test_summary import DAY0, DAY2, at
from users.models import User

pytestmark = pytest.mark.django_db


def test_outcome_and_export_lists_render() -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("ops@switchyard.test", "pw"))
    org = uuid.uuid4()
    services.task_outcome_record(event(org, at(DAY0, 9)))
    export = services.export_request(organization_id=org, start=at(DAY0), end=at(DAY2))
    assert client.get(f"/admin/analytics/taskoutcome/?occurred_at__month={DAY0.month}").status_code == 200
    assert client.get("/admin/analytics/export/?status__exact=pending").status_code == 200
    assert client.get(f"/admin/analytics/export/{export.id}/change/").status_code == 200
    assert client.get("/admin/analytics/export/add/").status_code == 403
