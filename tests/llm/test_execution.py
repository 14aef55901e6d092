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
from tests.factories import AITaskFactory
from users.models import Organization

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(django_capture_on_commit_callbacks):
    def execute(task_id: str) -> services.ExecutionOutcome:
        with django_capture_on_commit_callbacks(execute=True):
            return services.task_execute(task_id=uuid.UUID(task_id))

    return execute


def submit(tenant, prompt: str = "Summarise the history of railways.", **body) -> str:
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": prompt, **body}, format="json")
    assert response.status_code == 202, response.json()
    return response.json()["id"]


def organization(tenant) -> Organization:
    return Organization.objects.get(id=tenant.organization_id)


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
    assert events[0] == ("attempt", {"attempt": 1})  # a client drops deltas of earlier attempts here
    assert events[1] == ("status", {**events[1][1], "status": "processing"})
    assert [kind for kind, _ in events].count("delta") >= 2
    assert events[-1][0] == "status" and events[-1][1]["status"] == "done"
    assert "".join(d["text"] for kind, d in events if kind == "delta") == task.result


def test_a_calls_chunks_reach_the_stream_joined_and_before_its_status(tenant, run) -> None:
    """With the default flush interval the fake's answer of dozens of chunks (a word each)
    arrives in a few delta events: the first at once, the rest joined, flushed when the call
    ends, so every one comes before the terminal status."""
    task_id = submit(tenant, prompt="Write a long answer #fake:sleep=100")
    assert run(task_id).kind == "done"
    task = AITask.objects.get(id=task_id)
    chunks = len((task.result or "").split())
    kinds = [kind for kind, _ in stream_events(task_id)]
    deltas = kinds.count("delta")
    assert chunks >= 16 and 2 <= deltas <= chunks // 2, (chunks, deltas)  # fails if the call takes 5 x its 0.1 s
    assert kinds[-1] == "status" and kinds.index("status", kinds.index("delta")) == len(kinds) - 1


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
    @pytest.fixture(autouse=True)
    def _capture(self, django_capture_on_commit_callbacks) -> None:
        self.capture_on_commit = django_capture_on_commit_callbacks

    def test_expired_lease_goes_back_to_the_gate_and_one_message_is_sent(self, tenant, broker) -> None:
        task_id = str(AITaskFactory.create(organization=organization(tenant), lease_expired=True).id)
        report = services.tasks_sweep()
        assert report.lease_expired == 1 and report.redispatched == 0
        task = AITask.objects.get(id=task_id)
        assert task.status == "pending" and task.lease_token is None and task.dispatched_at is None
        # A live worker's keeper fills the gate: exactly one message reaches the broker.
        services.dispatch.pool_register(queue="default", node="test", slots=4, ttl_s=30)
        with self.capture_on_commit(execute=True):
            assert services.dispatch_fill("default").sent == 1
        assert broker.task_ids("default") == [task_id]

    def test_expired_lease_on_last_attempt_fails_and_dead_letters(self, tenant, settings) -> None:
        settings.TASK_MAX_ATTEMPTS = 2
        task_id = str(AITaskFactory.create(organization=organization(tenant), lease_expired=True, attempts=2).id)
        assert budget(tenant).reserved_usd > 0
        assert services.tasks_sweep().failed == 1
        task = AITask.objects.get(id=task_id)
        assert task.status == "failed" and task.error_code == "worker_lost"
        assert DeadLetter.objects.filter(task_id=uuid.UUID(task_id)).exists()
        assert budget(tenant).reserved_usd == 0

    def test_a_lost_message_is_sent_again_less_and_less_often(self, tenant, broker, settings) -> None:
        grace = settings.SWEEPER_PENDING_GRACE_S
        task_id = submit(tenant)
        sent = timezone.now() - timedelta(seconds=grace + 1)
        AITask.objects.filter(id=task_id).update(dispatched_at=sent, dispatch_count=1)
        with self.capture_on_commit(execute=True):
            assert services.tasks_sweep().redispatched == 1
        assert broker.task_ids("default") == [task_id]
        task = AITask.objects.get(id=task_id)
        assert task.dispatch_count == 2 and task.dispatched_at is not None and task.dispatched_at > sent
        # The second copy went out 1.5 graces ago: the third waits for 2 graces.
        AITask.objects.filter(id=task_id).update(dispatched_at=timezone.now() - timedelta(seconds=grace * 1.5))
        with self.capture_on_commit(execute=True):
            assert services.tasks_sweep().redispatched == 0
        assert broker.task_ids("default") == [task_id]  # no copy before it is due
        AITask.objects.filter(id=task_id).update(dispatched_at=timezone.now() - timedelta(seconds=grace * 2 + 1))
        with self.capture_on_commit(execute=True):
            assert services.tasks_sweep().redispatched == 1
        assert broker.task_ids("default") == [task_id, task_id]  # the third copy, and only it

    def test_tasks_waiting_at_the_gate_are_never_redispatched(self, tenant, broker) -> None:
        """A backlog held at the gate is not the sweeper's: no duplicate messages for it."""
        task_id = submit(tenant)
        AITask.objects.filter(id=task_id).update(created_at=timezone.now() - timedelta(minutes=10))
        assert AITask.objects.get(id=task_id).dispatched_at is None
        with self.capture_on_commit(execute=True):
            assert services.tasks_sweep().redispatched == 0
        assert broker.task_ids("default") == []

    def test_a_pending_task_past_its_expiry_fails_and_frees_its_budget(self, tenant, settings) -> None:
        task_id = submit(tenant)
        AITask.objects.filter(id=task_id).update(
            created_at=timezone.now() - timedelta(seconds=settings.TASK_PENDING_EXPIRY_S + 5)
        )
        assert services.tasks_sweep().expired == 1
        task = AITask.objects.get(id=task_id)
        assert task.status == "failed" and task.error_code == "expired"
        assert budget(tenant).reserved_usd == 0
        assert DeadLetter.objects.filter(task_id=task.id).exists()

    def test_one_failing_row_does_not_stall_the_batch(self) -> None:
        """A row whose change fails is skipped in its own savepoint; the others recover."""
        poison, healthy = (str(AITaskFactory.create(lease_expired=True).id) for _ in range(2))
        from django.db import connection

        with connection.cursor() as cursor:  # a trigger that rejects any change to the poison row
            cursor.execute(
                "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN "
                f"IF OLD.id = '{poison}' THEN RAISE EXCEPTION 'poison row'; END IF; RETURN NEW; END $$ "
                "LANGUAGE plpgsql;"
                "CREATE TRIGGER poison BEFORE UPDATE ON llm_aitask FOR EACH ROW EXECUTE FUNCTION poison();"
            )
        report = services.tasks_sweep()
        assert report.errors == 1 and report.lease_expired == 2
        assert AITask.objects.get(id=healthy).status == "pending"
        assert AITask.objects.get(id=poison).status == "processing"

    def test_fresh_and_open_tasks_are_left_alone(self, tenant) -> None:
        submit(tenant)
        assert services.tasks_sweep() == services.SweepReport()

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
        settings.TASK_TIME_LIMIT = -1  # everything counts as old enough
        assert services.tasks_sweep().reservations_released == 1
        assert budget(tenant).reserved_usd == 0


class TestProviderLimits:
    def test_a_provider_429_makes_every_worker_hold_off_the_model(self, tenant, run) -> None:
        from llm.limits import provider_backoff_remaining

        task_id = submit(tenant, prompt="Busy provider #fake:error=429:1")
        assert provider_backoff_remaining("fake-small") == 0
        assert run(task_id).kind == "retry"
        assert provider_backoff_remaining("fake-small") > 0  # Retry-After: 1 from the fake

    def test_no_slot_in_time_puts_the_task_back_without_spending_an_attempt(self, tenant, run, settings) -> None:
        from llm.limits import provider_slot

        settings.LLM_MODEL_LIMITS = "fake-small=1"
        settings.LLM_SLOT_WAIT_S = 0.2
        task_id = submit(tenant)
        with provider_slot("fake-small", timeout_s=1):  # another worker holds the only slot
            assert run(task_id).kind == "retry"
        task = AITask.objects.get(id=task_id)
        assert (task.status, task.attempts, task.dispatched_at) == ("pending", 0, None)
        assert task.available_at is not None and task.available_at > timezone.now()
        AITask.objects.filter(id=task_id).update(available_at=timezone.now())
        assert run(task_id).kind == "done"  # the slot is free again
        assert AITask.objects.get(id=task_id).attempts == 1

    def test_deltas_of_each_attempt_follow_its_attempt_mark(self, tenant, run) -> None:
        task_id = submit(tenant, prompt="Flaky once #fake:error=503:1")
        assert run(task_id).kind == "retry"
        AITask.objects.filter(id=task_id).update(available_at=timezone.now())
        assert run(task_id).kind == "done"
        events = stream_events(task_id)
        marks = [data["attempt"] for kind, data in events if kind == "attempt"]
        assert marks == [1, 2]
        second = [i for i, (kind, _) in enumerate(events) if kind == "attempt"][1]
        deltas = [(i, data) for i, (kind, data) in enumerate(events) if kind == "delta"]
        assert deltas and all(i > second and data["attempt"] == 2 for i, data in deltas)


def test_the_claim_is_one_statement_that_records_the_first_model(tenant) -> None:
    """Issue 9: the claim's UPDATE returns the row it took (no SELECT after it), and the
    first attempt's model is written by it too (no UPDATE of its own). A second claim of
    a task someone holds takes nothing."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from llm.services import execution

    task_id = uuid.UUID(submit(tenant))
    with CaptureQueriesContext(connection) as queries:
        task = execution._claim(task_id)
    assert len(queries.captured_queries) == 1, [q["sql"] for q in queries.captured_queries]
    assert task is not None and task.status == "processing" and task.attempts == 1
    assert task.served_model == task.model == "fake-small"
    assert task.lease_token is not None and task.lease_expires_at is not None and task.started_at is not None
    row = AITask.objects.get(id=task_id)
    assert (row.status, row.lease_token, row.served_model) == ("processing", task.lease_token, "fake-small")
    with CaptureQueriesContext(connection) as queries:
        assert services.fallback.model_for_attempt(task) == "fake-small"
    assert queries.captured_queries == []  # already recorded by the claim
    assert execution._claim(task_id) is None  # held, lease not expired
    AITask.objects.filter(id=task_id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    again = execution._claim(task_id)
    assert again is not None and again.attempts == 2 and again.lease_token != task.lease_token


def test_a_finished_task_is_read_back_with_its_cost_in_the_same_statement(tenant, run) -> None:
    """The done path stores the cost with UPDATE ... RETURNING: the event and the SSE status
    carry the charged cost and the database's completed_at."""
    task_id = submit(tenant, prompt="Tell me a story #fake:tokens=1000,2000")
    assert run(task_id).kind == "done"
    task = AITask.objects.get(id=task_id)
    event = OutboxEvent.objects.get(event_type="llm.ai_task.finished")
    assert Decimal(event.payload["cost_usd"]) == task.cost_usd == Decimal("0.0035")
    assert task.completed_at is not None
    assert event.payload["completed_at"].startswith(task.completed_at.isoformat()[:19])
    final = stream_events(task_id)[-1]
    assert final[1]["status"] == "done" and final[1]["cost_usd"] == format(task.cost_usd, "f")


def test_only_an_attempts_first_delta_refreshes_the_streams_expiry(settings) -> None:
    """A delta after the first appends with one XADD and leaves the expiry alone; the
    first delta of an attempt (and every status) sets it."""
    client = get_redis_connection("default")
    task_id = uuid.uuid4()
    key = streams.stream_key(task_id)
    streams.publish_delta(task_id, "one", attempt=1)
    assert settings.SSE_STREAM_TTL_S - 5 < client.ttl(key) <= settings.SSE_STREAM_TTL_S
    client.expire(key, 100)
    streams.publish_delta(task_id, " two", attempt=1, first=False)
    assert 0 < client.ttl(key) <= 100
    assert [fields[b"event"] for _, fields in client.xrange(key)] == [b"delta", b"delta"]
    streams.publish(task_id, "status", {"status": "done"})
    assert client.ttl(key) > 100
    client.delete(key)
