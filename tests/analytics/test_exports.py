"""CSV exports: queued on ``low``, written into the exports storage by the task's
service, scoped to the organization, the same rows with and without server-side
cursors, removed after their TTL."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from analytics import services
from analytics.models import Export
from analytics.services.exports import COLUMNS
from tests.analytics.test_partitions import event
from tests.analytics.test_summary import DAY0, DAY2, at, seed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def export_root(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "exports"
    settings.STORAGES = {
        **settings.STORAGES,
        "analytics_exports": {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": root}},
    }
    return root


def download(client: Any, url: str) -> list[list[str]]:
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    return list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))


def test_export_is_queued_on_low_then_downloadable_by_its_organization_only(
    tenant: Any, make_tenant: Callable[..., Any], broker: Any, django_capture_on_commit_callbacks: Callable[..., Any]
) -> None:
    org = uuid.UUID(tenant.organization_id)
    seed(org, uuid.UUID(make_tenant().organization_id))
    with django_capture_on_commit_callbacks(execute=True):
        response = tenant.client.post(
            "/api/v1/analytics/exports/", {"start": str(DAY0), "end": str(DAY2)}, format="json"
        )
    assert response.status_code == 202, response.json()
    body = response.json()
    assert (body["status"], body["download_url"]) == ("pending", None)
    assert response["Location"] == f"/api/v1/analytics/exports/{body['id']}/"
    assert broker.task_ids("low") and not broker.task_ids("default")

    detail = f"/api/v1/analytics/exports/{body['id']}/"
    assert tenant.client.get(f"{detail}download/").status_code == 409  # not written yet
    info = services.export_run(export_id=uuid.UUID(body["id"]))
    assert info is not None and (info.status, info.row_count) == ("done", 5)
    assert services.export_run(export_id=uuid.UUID(body["id"])) is None  # a redelivery does nothing

    done = tenant.client.get(detail).json()
    assert (done["status"], done["row_count"]) == ("done", 5)
    assert done["download_url"] == f"http://testserver{detail}download/"
    rows = download(tenant.client, done["download_url"])
    assert rows[0] == list(COLUMNS)
    assert [row[3] for row in rows[1:]] == ["done", "done", "failed", "done", "cancelled"]  # time order
    assert sum(Decimal(row[10]) for row in rows[1:]) == Decimal("0.0109")

    stranger = make_tenant().client
    assert stranger.get(detail).status_code == 404
    assert stranger.get(f"{detail}download/").status_code == 404
    assert tenant.client.get(f"/api/v1/analytics/exports/{uuid.uuid4()}/").status_code == 404


def test_rows_are_the_same_with_keyset_pages_when_server_side_cursors_are_off(
    settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = uuid.uuid4()
    for minute in range(7):  # two events in the same instant too: the keyset breaks ties by id
        services.task_outcome_record(event(org, at(DAY0, 10, minute // 2)))
    settings.ANALYTICS_EXPORT_CHUNK_ROWS = 3
    start, end = at(DAY0), at(DAY2)
    with CaptureQueriesContext(connection) as cursor_queries:
        streamed = list(services.exports.export_rows(organization_id=org, start=start, end=end))
    monkeypatch.setitem(connection.settings_dict, "DISABLE_SERVER_SIDE_CURSORS", True)
    with CaptureQueriesContext(connection) as keyset_queries:
        paged = list(services.exports.export_rows(organization_id=org, start=start, end=end))
    assert len(streamed) == 7 and paged == streamed
    assert len(keyset_queries) == 3  # 3 + 3 + 1 rows, no cursor
    assert not any("DECLARE" in q["sql"].upper() for q in keyset_queries.captured_queries)
    # One statement streamed through a cursor (inside a savepoint), however many chunks.
    assert len([q for q in cursor_queries.captured_queries if "analytics_taskoutcome" in q["sql"]]) == 1


def test_old_exports_are_removed_with_their_files(export_root: Path) -> None:
    org = uuid.uuid4()
    services.task_outcome_record(event(org, at(DAY0, 9)))
    old = services.export_request(organization_id=org, start=at(DAY0), end=at(DAY2))
    fresh = services.export_request(organization_id=org, start=at(DAY0), end=at(DAY2))
    for info in (old, fresh):
        services.export_run(export_id=info.id)
    Export.objects.filter(id=old.id).update(created_at=timezone.now() - timedelta(days=8))
    files = sorted(export_root.rglob("*.csv"))
    assert len(files) == 2
    assert services.exports_cleanup() == 1
    assert list(Export.objects.values_list("id", flat=True)) == [fresh.id]
    assert sorted(export_root.rglob("*.csv")) == [f for f in files if fresh.id.hex in f.name.replace("-", "")]


def test_a_pending_export_whose_dispatch_was_lost_is_sent_again(broker: Any) -> None:
    info = services.export_request(organization_id=uuid.uuid4(), start=at(DAY0), end=at(DAY2))
    assert broker.task_ids("low") == []  # on_commit never ran: as if the broker had been down
    Export.objects.filter(id=info.id).update(created_at=timezone.now() - timedelta(minutes=5))
    services.exports_cleanup()
    assert len(broker.task_ids("low")) == 1


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"start": "2026-11-01"},
        {"start": "2026-11-10", "end": "2026-11-01"},
        {"start": "not a date", "end": "2026-11-01"},
        {"start": "2020-01-01", "end": "2026-01-01"},
        {"start": ["x"], "end": "2026-11-01"},
    ],
)
def test_export_request_rejects_bad_bodies(tenant: Any, body: dict[str, Any]) -> None:
    response = tenant.client.post("/api/v1/analytics/exports/", body, format="json")
    assert response.status_code == 400, response.content


def test_an_export_whose_file_is_gone_answers_404(tenant: Any, export_root: Path) -> None:
    org = uuid.UUID(tenant.organization_id)
    info = services.export_request(organization_id=org, start=at(DAY0), end=at(DAY2))
    services.export_run(export_id=info.id)
    for path in export_root.rglob("*.csv"):
        path.unlink()
    response = tenant.client.get(f"/api/v1/analytics/exports/{info.id}/download/")
    assert response.status_code == 404


def test_export_detail_query_count_does_not_grow_with_rows(tenant: Any) -> None:
    org = uuid.UUID(tenant.organization_id)
    tenant.client.get(f"/api/v1/analytics/exports/{uuid.uuid4()}/")  # the key's first use writes last_used_at
    counts = []
    for rows in (1, 30):
        for i in range(rows):
            services.task_outcome_record(event(org, at(DAY0, 9) + timedelta(seconds=i)))
        info = services.export_request(organization_id=org, start=at(DAY0), end=at(DAY2))
        services.export_run(export_id=info.id)
        with CaptureQueriesContext(connection) as queries:
            assert tenant.client.get(f"/api/v1/analytics/exports/{info.id}/").status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1] <= 3
