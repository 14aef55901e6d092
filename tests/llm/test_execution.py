"""The worker side of the lifecycle, executed in-process against real PostgreSQL and
Redis (the Celery-driven versions of these paths live in tests/integration)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone
from django_redis import get_redis_connection

from billing import services as billing
from kernel.models import OutboxEvent
from llm import services, streams
from llm.models import AITask, DeadLetter

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    def execute(task_id: str) -> services.Outcome:
        with django_capture_on_commit_callbacks(execute=True):
            return services.task_execute(task_id=uuid.UUID(task_id))

    return execute


def submit(tenant, prompt: str = "Summarise the history of railways.", **body) -> str:
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": prompt, **body}, format="json")
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def budget(tenant):
    return billing.budget_status(organization_id=uuid.UUID(tenant.organization_id))


def stream_events(task_id: str) -> list[tuple[str, dict]]:
    import json

    raw = get_redis_connection("default").xrange(streams.stream_key(task_id))
    return [(fields[b"event"].decode(), json.loads(fields[b"data"])) for _, fields in raw]


def test_done_with_tokens_cost_ledger_event_and_stream(tenant, run) -> None:
    task_id = submit(tenant, prompt="Tell me a story #fake:tokens=1000,2000")
    assert run(task_id).kind == "done"
    task = AITask.objects.get(id=task_id)
    assert task.status == "done" and task.attempts == 1
    assert (task.input_tokens, task.output_tokens) == (1000, 2000)
    # fake-small: $0.50 / $1.50 per million tokens
    assert task.cost_usd == Decimal("0.0005") + Decimal("0.003")
    status = budget(tenant)
    assert status.spent_usd == task.cost_usd and status.reserved_usd == 0
    assert OutboxEvent.objects.filter(event_type="llm.ai_task.finished").count() == 1
    events = stream_events(task_id)
    assert events[0] == ("status", {**events[0][1], "status": "processing"})
    assert [kind for kind, _ in events].count("delta") >= 2
    assert events[-1][0] == "status" and events[-1][1]["status"] == "done"
    assert "".join(d["text"] for kind, d in events if kind == "delta") == task.result


def test_duplicate_delivery_has_no_effect(tenant, run) -> None:
    task_id = submit(tenant)
    assert run(task_id).kind == "done"
    spent = budget(tenant).spent_usd
    assert run(task_id).kind == "skipped"
    assert AITask.objects.get(id=task_id).attempts == 1
    assert budget(tenant).spent_usd == spent


def test_client_error_fails_at_once_and_releases(tenant, run) -> None:
    task_id = submit(tenant, prompt="Bad request please #fake:error=400")
    assert run(task_id).kind == "failed"
    task = AITask.objects.get(id=task_id)
    assert task.status == "failed" and task.attempts == 1 and task.error
    assert task.cost_usd == 0
    assert budget(tenant).reserved_usd == 0 and budget(tenant).spent_usd == 0
    assert not DeadLetter.objects.exists()


def test_rate_limit_goes_back_to_pending_then_succeeds(tenant, run) -> None:
    task_id = submit(tenant, prompt="Busy provider #fake:error=429:2")
    outcome = run(task_id)
    assert outcome.kind == "retry" and outcome.queue == "default"
    assert outcome.countdown is not None and outcome.countdown >= 1  # Retry-After: 1 is honoured
    task = AITask.objects.get(id=task_id)
    assert task.status == "pending" and task.available_at is not None and task.available_at > timezone.now()
    assert run(task_id).kind == "skipped"  # not due yet: an early duplicate does nothing
    for expected in ("retry", "done"):
        AITask.objects.filter(id=task_id).update(available_at=timezone.now())
        assert run(task_id).kind == expected
    task.refresh_from_db()
    assert task.status == "done" and task.attempts == 3


def test_exhausted_retries_fail_and_dead_letter(tenant, run, settings) -> None:
    settings.TASK_MAX_ATTEMPTS = 2
    task_id = submit(tenant, prompt="Always down #fake:error=503")
    assert run(task_id).kind == "retry"
    AITask.objects.filter(id=task_id).update(available_at=timezone.now())
    assert run(task_id).kind == "failed"
    task = AITask.objects.get(id=task_id)
    assert task.status == "failed" and task.attempts == 2 and "gave up" in (task.error or "")
    assert DeadLetter.objects.filter(task_id=uuid.UUID(task_id)).count() == 1
    assert budget(tenant).reserved_usd == 0 and budget(tenant).spent_usd == 0


def test_dead_letter_replay_runs_the_task_again(tenant, run, settings) -> None:
    settings.TASK_MAX_ATTEMPTS = 1
    task_id = submit(tenant, prompt="Flaky once #fake:error=500:1")
    assert run(task_id).kind == "failed"
    letter = DeadLetter.objects.get(task_id=uuid.UUID(task_id))
    replayed = services.dead_letter_replay(dead_letter_id=letter.id)
    assert replayed.status == "pending" and replayed.attempts == 0
    settings.TASK_MAX_ATTEMPTS = 3  # a replay starts a fresh set of attempts
    assert run(task_id).kind == "retry"
    AITask.objects.filter(id=task_id).update(available_at=timezone.now())
    assert run(task_id).kind == "done"
    assert DeadLetter.objects.get(id=letter.id).replayed_at is not None
    assert budget(tenant).spent_usd == AITask.objects.get(id=task_id).cost_usd > 0


def test_cancel_while_processing_discards_result_and_charges_nothing(tenant, run) -> None:
    task_id = submit(tenant)
    claimed = AITask.objects.filter(id=task_id).update(
        status="processing", lease_token=uuid.uuid4(), lease_expires_at=timezone.now() + timedelta(minutes=1)
    )
    assert claimed
    services.task_cancel(organization_id=uuid.UUID(tenant.organization_id), task_id=uuid.UUID(task_id))
    # The worker that held the lease finishes: nothing to update, nothing charged.
    from llm.providers import Completion
    from llm.services.execution import _complete

    task = AITask.objects.get(id=task_id)
    task.lease_token = uuid.uuid4()
    outcome = _complete(
        task, Completion(text="late", input_tokens=5, output_tokens=5, model="fake-small", finish_reason="stop")
    )
    assert outcome.kind == "discarded"
    assert AITask.objects.get(id=task_id).status == "cancelled"
    assert budget(tenant).spent_usd == 0 and budget(tenant).reserved_usd == 0


def test_response_cache_hit_is_done_at_once_free_and_per_organization(make_tenant, run) -> None:
    alice, bob = make_tenant(), make_tenant()
    prompt = "What is a switchyard? #fake:tokens=100,200"
    first = submit(alice, prompt=prompt)
    assert run(first).kind == "done"
    response = alice.client.post("/api/v1/ai-tasks/", {"prompt": prompt}, format="json")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "done" and body["cached"] is True and Decimal(body["cost_usd"]) == 0
    assert body["result"] == AITask.objects.get(id=first).result
    assert billing.budget_status(organization_id=uuid.UUID(alice.organization_id)).reserved_usd == 0
    # Another organization with the same prompt gets no cached answer.
    assert bob.client.post("/api/v1/ai-tasks/", {"prompt": prompt}, format="json").json()["status"] == "pending"
    # cache=false bypasses the cache.
    fresh = alice.client.post("/api/v1/ai-tasks/", {"prompt": prompt, "cache": False}, format="json").json()
    assert fresh["status"] == "pending"


def test_backoff_is_exponential_jittered_capped_and_honours_retry_after(settings) -> None:
    settings.TASK_RETRY_BACKOFF_S = 2
    settings.TASK_RETRY_BACKOFF_MAX_S = 300
    for attempt in range(1, 6):
        delay = services.backoff_seconds(attempt)
        assert 2**attempt / 2 <= delay <= 2**attempt
    assert services.backoff_seconds(30) == 300
    assert services.backoff_seconds(1, retry_after=20) >= 20
    assert services.backoff_seconds(1, retry_after=10_000) == 300


class TestSweeper:
    def test_expired_lease_goes_back_to_pending_and_is_redispatched(self, tenant) -> None:
        task_id = submit(tenant)
        AITask.objects.filter(id=task_id).update(
            status="processing",
            attempts=1,
            lease_token=uuid.uuid4(),
            lease_expires_at=timezone.now() - timedelta(seconds=1),
        )
        report = services.tasks_sweep()
        assert report.lease_expired == 1 and report.redispatched >= 1
        task = AITask.objects.get(id=task_id)
        assert task.status == "pending" and task.lease_token is None

    def test_expired_lease_on_last_attempt_fails_and_dead_letters(self, tenant, settings) -> None:
        settings.TASK_MAX_ATTEMPTS = 2
        task_id = submit(tenant)
        AITask.objects.filter(id=task_id).update(
            status="processing",
            attempts=2,
            lease_token=uuid.uuid4(),
            lease_expires_at=timezone.now() - timedelta(seconds=1),
        )
        assert services.tasks_sweep().failed == 1
        task = AITask.objects.get(id=task_id)
        assert task.status == "failed" and task.error_code == "worker_lost"
        assert DeadLetter.objects.filter(task_id=uuid.UUID(task_id)).exists()
        assert budget(tenant).reserved_usd == 0

    def test_never_started_pending_task_is_redispatched_once_per_grace(self, tenant) -> None:
        task_id = submit(tenant)
        long_ago = timezone.now() - timedelta(minutes=5)
        AITask.objects.filter(id=task_id).update(created_at=long_ago, dispatched_at=long_ago)
        assert services.tasks_sweep().redispatched == 1
        dispatched_at = AITask.objects.get(id=task_id).dispatched_at
        assert dispatched_at is not None and dispatched_at > long_ago
        assert services.tasks_sweep().redispatched == 0  # dispatched just now: inside the grace period

    def test_fresh_and_open_tasks_are_left_alone(self, tenant) -> None:
        submit(tenant)
        assert services.tasks_sweep() == services.SweepReport(0, 0, 0, 0)

    def test_orphaned_reservation_is_released_after_its_task_ended(self, tenant, settings) -> None:
        from contracts.billing import ReservationRequest

        org = uuid.UUID(tenant.organization_id)
        # A crash after reserving but before the task row was written leaves a reservation behind.
        billing.budget_reserve(
            ReservationRequest(
                organization_id=org,
                api_key_id=None,
                task_id=uuid.uuid4(),
                model="fake-small",
                estimated_input_tokens=100,
                max_output_tokens=100,
            )
        )
        assert budget(tenant).reserved_usd > 0
        settings.TASK_LEASE_SECONDS = -1  # everything counts as old enough
        assert services.tasks_sweep().reservations_released == 1
        assert budget(tenant).reserved_usd == 0
