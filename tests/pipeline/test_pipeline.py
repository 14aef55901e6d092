"""End to end with real Celery workers (one process per queue, SPEC §2 policy), real
PostgreSQL and Redis, and the fake provider's directives (SPEC §6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from decimal import Decimal
from urllib.parse import urlparse

import httpx
import pytest
from django.conf import settings

from billing import services as billing
from llm import services
from llm.models import AITask
from tests.pipeline.conftest import ROOT, TcpProxy, process_env, wait_for
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def submit(tenant, prompt: str, **body) -> str:
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": prompt, **body}, format="json")
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def wait_terminal(task_id: str, timeout: float = 40) -> AITask:
    def terminal() -> AITask | None:
        task = AITask.objects.get(id=task_id)
        return task if task.status in ("done", "failed", "cancelled") else None

    return wait_for(terminal, timeout=timeout)  # type: ignore[return-value]


def budget(tenant):
    return billing.budget_status(organization_id=uuid.UUID(tenant.organization_id))


def read_sse(
    base: str,
    tenant,
    task_id: str,
    last_event_id: str | None = None,
    sink: list[dict] | None = None,
    comments: list[str] | None = None,
) -> list[dict]:
    """Read one SSE response to its end; events are appended to ``sink`` as they arrive."""
    headers = {"Authorization": f"Bearer {tenant.issued.key}"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    events: list[dict] = [] if sink is None else sink
    current: dict = {}
    with httpx.stream("GET", f"{base}/api/v1/ai-tasks/{task_id}/events/", headers=headers, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    current["data"] = json.loads(current["data"])
                    events.append(current)
                current = {}
            elif line.startswith(":"):
                if comments is not None:
                    comments.append(line)
                current = {}
            elif ":" in line:
                field, _, value = line.partition(":")
                current[field] = value.strip()
    return events


def test_submit_runs_to_done_and_sse_sees_every_transition(tenant, start_worker, stream_server) -> None:
    task_id = submit(tenant, "Describe a marshalling yard in detail. #fake:tokens=120,300")
    # No worker yet: the stream starts with the current state, pending.
    collected: list[dict] = []
    heartbeats: list[str] = []
    reader = threading.Thread(
        target=read_sse, args=(stream_server, tenant, task_id), kwargs={"sink": collected, "comments": heartbeats}
    )
    reader.start()
    wait_for(lambda: collected, timeout=20)  # the snapshot arrived while the task is still pending
    wait_for(lambda: heartbeats, timeout=5)  # an idle stream keeps the connection alive (0.5 s here)
    assert heartbeats[0] == ": heartbeat"
    start_worker("default")
    reader.join(timeout=40)
    assert not reader.is_alive()

    kinds = [(e["event"], e["data"].get("status")) for e in collected]
    statuses = [status for kind, status in kinds if kind == "status"]
    assert statuses[0] == "pending" and statuses[1] == "processing" and statuses[-1] == "done"
    deltas = [e for e in collected if e["event"] == "delta"]
    assert len(deltas) >= 2
    task = AITask.objects.get(id=task_id)
    assert "".join(d["data"]["text"] for d in deltas) == task.result
    assert (task.status, task.input_tokens, task.output_tokens, task.attempts) == ("done", 120, 300, 1)
    assert task.cost_usd == Decimal("0.00006") + Decimal("0.00045")
    assert budget(tenant).spent_usd == task.cost_usd and budget(tenant).reserved_usd == 0

    # Reconnecting with Last-Event-ID yields exactly what came after that event.
    processing = next(e for e in collected if e["event"] == "status" and e["data"]["status"] == "processing")
    resumed = read_sse(stream_server, tenant, task_id, last_event_id=processing["id"])
    after = collected[collected.index(processing) + 1 :]
    assert [e["id"] for e in resumed] == [e["id"] for e in after]


def test_many_waiting_streams_are_served_by_a_small_connection_pool(tenant, start_stream_server) -> None:
    """Six streams wait on pending tasks while the stream role's pool holds at most two
    connections (and gives up after one second); the database stays usable meanwhile.
    That a stream's own thread keeps no connection is tested in tests/llm/test_sse.py."""
    base = start_stream_server(DATABASE_POOL_MIN="1", DATABASE_POOL_MAX="2", DATABASE_POOL_TIMEOUT="1")
    task_ids = [submit(tenant, f"Nobody runs this one {i}") for i in range(6)]
    sinks: list[list[dict]] = [[] for _ in task_ids]
    readers = [
        threading.Thread(target=read_sse, args=(base, tenant, task_id), kwargs={"sink": sink}, daemon=True)
        for task_id, sink in zip(task_ids, sinks, strict=True)
    ]
    for reader in readers:
        reader.start()
    wait_for(lambda: all(sinks), timeout=20)
    assert [sink[0]["data"]["status"] for sink in sinks] == ["pending"] * 6
    # and the server still answers a database-backed request while all six wait
    assert httpx.get(f"{base}/readyz", timeout=5).json()["checks"]["database"]["ok"] is True
    for task_id in task_ids:  # end the streams
        tenant.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/")
    for reader in readers:
        reader.join(timeout=10)
    assert all(sink[-1]["data"]["status"] == "cancelled" for sink in sinks)


def test_events_of_another_organization_are_404(make_tenant, stream_server) -> None:
    alice, bob = make_tenant(), make_tenant()
    task_id = submit(alice, "A task that belongs to Alice")
    response = httpx.get(
        f"{stream_server}/api/v1/ai-tasks/{task_id}/events/",
        headers={"Authorization": f"Bearer {bob.issued.key}"},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    unauth = httpx.get(f"{stream_server}/api/v1/ai-tasks/{task_id}/events/", timeout=10)
    assert unauth.status_code == 401


def test_error_classes_end_as_the_spec_says(tenant, workers) -> None:
    cases = {
        "rate limited twice #fake:error=429:2": ("done", 3),
        "unavailable once #fake:error=503:1": ("done", 2),
        "bad request #fake:error=400": ("failed", 1),
        "never answers #fake:hang": ("failed", 1),
    }
    ids = {prompt: submit(tenant, prompt) for prompt in cases}
    for prompt, (status, attempts) in cases.items():
        task = wait_terminal(ids[prompt])
        assert (task.status, task.attempts) == (status, attempts), (prompt, task.error)
        if status == "failed":
            assert task.cost_usd == 0
    hung = AITask.objects.get(id=ids["never answers #fake:hang"])
    assert hung.error_code == "timeout" and "time limit" in (hung.error or "")
    charged = sum(AITask.objects.filter(status="done").values_list("cost_usd", flat=True), Decimal(0))
    status = budget(tenant)
    assert status.spent_usd == charged and status.reserved_usd == 0  # failures charged nothing, released all


def test_worker_killed_mid_task_finishes_exactly_once(tenant, start_worker, start_beat) -> None:
    doomed = start_worker("default")
    start_worker("priority")  # runs the sweeper that beat schedules
    task_id = submit(tenant, "A long job #fake:sleep=3000")
    wait_for(lambda: AITask.objects.get(id=task_id).status == "processing", timeout=20)
    doomed.kill()  # SIGKILL to the whole worker: no chance to ack, reject or clean up
    doomed.process.wait(timeout=10)
    start_worker("default")
    start_beat()  # the lease expires, the sweeper puts the task back, a live worker runs it
    wait_for(lambda: AITask.objects.get(id=task_id).status in ("done", "failed"), timeout=60, interval=0.5)
    task = AITask.objects.get(id=task_id)
    assert task.status == "done" and task.attempts == 2
    report = billing.usage_report(
        organization_id=uuid.UUID(tenant.organization_id),
        start=task.created_at.date(),
        end=task.created_at.date(),
        group_by="model",
    )
    assert [row.tasks for row in report] == [1]  # one ledger row: charged once
    assert budget(tenant).spent_usd == task.cost_usd > 0 and budget(tenant).reserved_usd == 0


def test_cancel_pending_processing_and_terminal(tenant, start_worker) -> None:
    pending = submit(tenant, "Nobody is listening yet", priority="low")
    response = tenant.client.post(f"/api/v1/ai-tasks/{pending}/cancel/")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"

    worker = start_worker("default")
    running = submit(tenant, "Slow and then cancelled #fake:sleep=4000")
    wait_for(lambda: AITask.objects.get(id=running).status == "processing", timeout=20)
    time.sleep(1)  # part of the answer streams out
    response = tenant.client.post(f"/api/v1/ai-tasks/{running}/cancel/")
    cancelled_at = time.monotonic()
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    # The worker stops the call within about a second (not after the 4 s of the answer)
    # and charges what the provider produced up to the cancel.
    wait_for(lambda: f"{running}] succeeded" in worker.log_path.read_text(), timeout=20, interval=0.05)
    assert time.monotonic() - cancelled_at < 2.5
    assert "'cancelled'" in worker.log_path.read_text()
    task = AITask.objects.get(id=running)
    full_answer = AITask(prompt=task.prompt, model=task.model, max_tokens=task.max_tokens)
    assert task.status == "cancelled" and task.output_tokens > 0
    assert task.cost_usd > 0 and budget(tenant).spent_usd == task.cost_usd and budget(tenant).reserved_usd == 0
    assert task.output_tokens < _full_output_tokens(full_answer)
    assert tenant.client.post(f"/api/v1/ai-tasks/{running}/cancel/").status_code == 409

    low = start_worker("low")
    # The cancelled pending task never runs, even with a worker on its queue: it waited at
    # the dispatch gate, which only sends pending tasks, and a delivery that slipped
    # through would find nothing to claim.
    time.sleep(settings.DISPATCH_TICK_S * 3)
    assert AITask.objects.get(id=pending).attempts == 0
    assert pending not in low.log_path.read_text()


def _full_output_tokens(task: AITask) -> int:
    """What the fake provider answers to this prompt when it is not interrupted."""
    from llm.providers import CompletionRequest
    from llm.providers.fake import FakeProvider

    request = CompletionRequest.from_prompt(task.prompt, model=task.model, max_tokens=task.max_tokens)
    return FakeProvider(latency_ms=0).complete(request).output_tokens


def test_broker_outage_at_submit_still_accepts_and_completes_later(tenant, start_worker) -> None:
    broker = urlparse(settings.CELERY_BROKER_URL)
    proxy = TcpProxy(broker.port or 6379)
    proxy.start()
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi:application", "-b", f"127.0.0.1:{port}", "-w", "1"],
        cwd=ROOT,
        env=process_env(CELERY_BROKER_URL=f"redis://127.0.0.1:{proxy.port}{broker.path}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(f"{base}/healthz"), timeout=30)
        proxy.stop()  # the broker is now unreachable for the web process
        response = httpx.post(
            f"{base}/api/v1/ai-tasks/",
            json={"prompt": "Accepted during an outage"},
            headers={"Authorization": f"Bearer {tenant.issued.key}"},
            timeout=30,
        )
        assert response.status_code == 202
        task_id = response.json()["id"]
        assert AITask.objects.get(id=task_id).status == "pending"
        start_worker("default")
        # The broker is back (for the sweeper's process); a sweep after the grace period dispatches it.
        wait_for(
            lambda: services.tasks_sweep() and AITask.objects.get(id=task_id).status == "done", timeout=30, interval=0.5
        )
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(timeout=10)
        proxy.stop()


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_backlog_on_low_never_delays_priority(tenant, start_worker) -> None:
    """With the low pool full and a wave of its backlog queued behind it, a priority task
    starts within one dispatch tick (the gate's slowest path to a free worker) plus a
    margin for the message hop on a loaded machine: it never waits for a low slot (an 8 s
    job, under time limits raised for this test) to free."""
    limits = {"TASK_SOFT_TIME_LIMIT": "20", "TASK_TIME_LIMIT": "25", "CELERY_VISIBILITY_TIMEOUT": "30"}
    for queue in ("priority", "default", "low"):
        start_worker(queue, **limits)
    concurrency = 4  # start_worker's WORKER_CONCURRENCY
    backlog = [submit(tenant, f"Bulk job {i} #fake:sleep=8000", priority="low") for i in range(2 * concurrency)]
    wait_for(lambda: AITask.objects.filter(id__in=backlog, status="processing").count() >= concurrency, timeout=20)
    urgent = wait_terminal(submit(tenant, "Interactive turn", priority="high"), timeout=20)
    assert urgent.status == "done" and urgent.started_at is not None
    waited = (urgent.started_at - urgent.created_at).total_seconds()
    assert waited <= settings.DISPATCH_TICK_S + 2.0, waited
    # When it started, the low pool was full and the rest of the backlog still waited.
    running = AITask.objects.filter(id__in=backlog, started_at__lte=urgent.started_at).exclude(
        completed_at__lte=urgent.started_at
    )
    assert running.count() == concurrency
    assert AITask.objects.filter(id__in=backlog, started_at__isnull=True).count() == concurrency
