"""Analytics with real worker processes (bin/switchyard, threads pools): a 200,000-row
export on the ``low`` worker with flat memory, and exactly one event per finished task
even when the broker was down while the tasks finished."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from analytics import services
from analytics.models import Export, TaskOutcome
from analytics.services.partitions import month_of
from kernel.models import OutboxEvent
from llm.models import AITask
from tests.pipeline.conftest import TcpProxy, Worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROWS = 200_000
MAX_GROWTH_KIB = 50 * 1024


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def seed_rows(organization_id: str, count: int) -> None:
    """``count`` outcomes in this month, written by one INSERT … SELECT."""
    services.partitions_maintain()
    start = month_of(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO analytics_taskoutcome (event_id, task_id, organization_id, status, model, priority, cached,
                attempts, input_tokens, output_tokens, cost_usd, error_code, duration_seconds, completed_at,
                occurred_at, recorded_at)
            SELECT gen_random_uuid(), gen_random_uuid(), %s, CASE WHEN i %% 10 = 0 THEN 'failed' ELSE 'done' END,
                   'fake-small', 'normal', false, 1, i %% 500, i %% 900, (i %% 900) * 0.0000015, '', 0.5 + i %% 7,
                   t, t, now()
              FROM generate_series(1, %s) AS i,
                   LATERAL (SELECT %s::timestamptz + i * interval '5 seconds') AS at(t)
            """,
            [organization_id, count, start.isoformat() + " 00:00:00+00"],
        )


def export(tenant: Any, days: tuple[str, str]) -> str:
    response = tenant.client.post("/api/v1/analytics/exports/", {"start": days[0], "end": days[1]}, format="json")
    assert response.status_code == 202, response.json()
    return str(response.json()["id"])


def wait_done(export_id: str, timeout: float) -> Export:
    return wait_for(  # type: ignore[return-value]
        lambda: Export.objects.filter(id=export_id, status__in=["done", "failed"]).first(), timeout=timeout
    )


def test_a_200k_row_export_keeps_the_low_workers_memory_flat(
    tenant: Any, make_tenant: Callable[..., Any], start_worker: Callable[..., Worker], tmp_path: Path, settings: Any
) -> None:
    seed_rows(tenant.organization_id, ROWS)
    warm = make_tenant()
    seed_rows(warm.organization_id, 50)
    root = tmp_path / "exports"
    storage = {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": root}}
    settings.STORAGES = {**settings.STORAGES, "analytics_exports": storage}  # the download, in this process
    worker = start_worker("low", ANALYTICS_EXPORT_ROOT=str(root))
    start = month_of(timezone.now())
    next_month = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    days = (start.isoformat(), (next_month - timedelta(days=1)).isoformat())

    # Warm up: the first export imports the export path and opens its connections.
    assert wait_done(export(warm, days), timeout=60).row_count == 50
    before = memory_kib(worker.process.pid)
    big = wait_done(export(tenant, days), timeout=240)
    after = memory_kib(worker.process.pid)
    growth = after["VmHWM"] - before["VmHWM"]
    print(f"export of {big.row_count} rows: worker VmHWM {before['VmHWM']} -> {after['VmHWM']} KiB (+{growth})")
    assert (big.status, big.row_count) == ("done", ROWS)
    assert growth < MAX_GROWTH_KIB
    written = root / big.file_name
    with written.open("rb") as handle:
        assert sum(1 for _ in handle) == ROWS + 1  # the header, then every row
    response = tenant.client.get(f"/api/v1/analytics/exports/{big.id}/download/")
    assert response.status_code == 200 and response.streaming
    response.close()


def test_each_finished_task_yields_exactly_one_event_across_a_broker_outage(
    tenant: Any, start_worker: Callable[..., Worker], start_beat: Callable[..., Any]
) -> None:
    broker = urlparse(django_settings.CELERY_BROKER_URL)
    proxy = TcpProxy(broker.port or 6379)
    proxy.start()
    via_proxy = {"CELERY_BROKER_URL": f"redis://127.0.0.1:{proxy.port}{broker.path}"}
    try:
        for queue in ("priority", "default", "low"):
            start_worker(queue, **via_proxy)
        start_beat(**via_proxy)
        prompts = {
            "done": "Finish while the broker is down #fake:sleep=3000",
            "failed": "Fail while the broker is down #fake:sleep=3000 #fake:error=400",
            "cancelled": "Cancelled while the broker is down #fake:sleep=30000",
        }
        ids = {}
        for expected, prompt in prompts.items():
            response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": prompt}, format="json")
            assert response.status_code == 202, response.json()
            ids[expected] = response.json()["id"]
        wait_for(lambda: AITask.objects.filter(id__in=ids.values(), status="processing").count() == 3, timeout=30)
        proxy.stop()  # the workers and beat lose the broker while the tasks finish
        assert tenant.client.post(f"/api/v1/ai-tasks/{ids['cancelled']}/cancel/").status_code == 200
        wait_for(
            lambda: (
                AITask.objects.filter(id__in=[ids["done"], ids["failed"]], status__in=["done", "failed"]).count() == 2
            ),
            timeout=30,
        )
        assert dict(AITask.objects.filter(id__in=ids.values()).values_list("id", "status")) == {
            uuid.UUID(task_id): status for status, task_id in ids.items()
        }
        unpublished = OutboxEvent.objects.filter(payload__task_id__in=list(ids.values()), published_at__isnull=True)
        assert unpublished.count() == 3  # written with the task's change; the relay cannot reach the broker
        assert TaskOutcome.objects.filter(task_id__in=ids.values()).count() == 0
        proxy.start()  # the broker is back
        wait_for(lambda: TaskOutcome.objects.filter(task_id__in=ids.values()).count() >= 3, timeout=60)
        # Unacknowledged messages come back after the visibility timeout: give them time
        # to be redelivered, then count again.
        wait_for(lambda: not unpublished.exists(), timeout=30)
        time.sleep(django_settings.CELERY_VISIBILITY_TIMEOUT + 3)
        outcomes = list(TaskOutcome.objects.filter(task_id__in=ids.values()).values_list("task_id", "status"))
        assert sorted(outcomes) == sorted((uuid.UUID(task_id), status) for status, task_id in ids.items())
    finally:
        proxy.stop()
