"""The dispatch gate (llm.services.dispatch) against real PostgreSQL, Redis and the broker:
the window follows the registered pool slots, held tasks go out by max-min fair share,
caps bite only while another organization waits."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from llm import services
from llm.models import AITask, DispatchPolicy
from llm.services.dispatch import fair_picks, pool_register, pool_slots, window

pytestmark = pytest.mark.django_db


def submit(tenant, prompt: str = "Tell me about signal boxes.", **body) -> str:
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": prompt, "cache": False, **body}, format="json")
    assert response.status_code == 202, response.json()
    return str(response.json()["id"])


@pytest.fixture
def fill(django_capture_on_commit_callbacks):
    def run(queue: str = "default") -> services.FillReport:
        with django_capture_on_commit_callbacks(execute=True):
            return services.dispatch_fill(queue)

    return run


def ids(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


class TestFairPicks:
    def test_each_place_goes_to_the_organization_with_the_fewest_outstanding(self) -> None:
        a, b, c = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
        held = {a: ids(10), b: ids(10), c: ids(1)}
        picks = fair_picks(held, {a: 5, b: 1}, free=6, caps={})
        owners = [next(org for org, tasks in held.items() if p in tasks) for p in picks]
        # c (0 out) first, then b and c level... c has one task only; b catches up to a.
        assert owners.count(c) == 1 and owners.count(b) == 4 and owners.count(a) == 1
        # Oldest first inside an organization.
        assert [p for p in picks if p in held[b]] == held[b][:4]

    def test_an_organization_alone_takes_every_free_place_whatever_its_cap(self) -> None:
        a = uuid.uuid4()
        held = {a: ids(50)}
        assert fair_picks(held, {a: 100}, free=20, caps={a: 3}) == held[a][:20]

    def test_a_cap_bites_while_another_organization_waits(self) -> None:
        a, b = uuid.UUID(int=1), uuid.UUID(int=2)
        held = {a: ids(50), b: ids(50)}
        picks = fair_picks(held, {a: 0, b: 10}, free=12, caps={a: 2, b: 0})
        # a reaches its cap of 2 while b waits; b takes the rest (it is alone under cap).
        assert len([p for p in picks if p in held[a]]) == 2
        assert len(picks) == 12


class TestWindow:
    def test_window_is_the_live_slots_plus_headroom_and_lapsed_workers_drop_out(self, settings) -> None:
        assert window("default") == 0  # no worker: everything waits at the gate
        pool_register(queue="default", node="w1", slots=300, ttl_s=30)
        pool_register(queue="default", node="w2", slots=20, ttl_s=-1)  # lapsed
        assert pool_slots("default") == 300
        assert window("default") == 300 + settings.DISPATCH_HEADROOM


class TestSubmitAndFill:
    def test_submit_goes_straight_to_the_broker_only_while_the_queue_has_room(
        self, tenant, broker, settings, django_capture_on_commit_callbacks
    ) -> None:
        settings.DISPATCH_HEADROOM = 0
        pool_register(queue="default", node="w1", slots=2, ttl_s=30)
        with django_capture_on_commit_callbacks(execute=True):
            first, second, third = submit(tenant), submit(tenant), submit(tenant)
        assert broker.task_ids("default") == [first, second]
        assert AITask.objects.get(id=third).dispatched_at is None  # held

    def test_a_held_task_keeps_later_submits_from_overtaking_it_even_with_room(
        self, tenant, broker, settings, django_capture_on_commit_callbacks
    ) -> None:
        """The fast path's first question (EXISTS on the held index): while one task waits
        at the gate, a new one waits too, whatever room the queue has; fill sends them in order."""
        settings.DISPATCH_HEADROOM = 0
        pool_register(queue="default", node="w1", slots=1, ttl_s=30)
        with django_capture_on_commit_callbacks(execute=True):
            first, held = submit(tenant), submit(tenant)
        pool_register(queue="default", node="w2", slots=10, ttl_s=30)  # room now
        with django_capture_on_commit_callbacks(execute=True):
            later = submit(tenant)
        assert broker.task_ids("default") == [first]
        assert AITask.objects.get(id=held).dispatched_at is None
        assert AITask.objects.get(id=later).dispatched_at is None

    def test_nothing_is_sent_while_no_worker_consumes_the_queue(self, tenant, broker, fill) -> None:
        task_id = submit(tenant)
        assert fill().sent == 0 and broker.task_ids("default") == []
        assert AITask.objects.get(id=task_id).dispatched_at is None

    def test_fill_hands_free_places_out_fairly_and_sends_one_message_each(
        self, make_tenant, broker, settings, fill
    ) -> None:
        settings.DISPATCH_HEADROOM = 0
        alice, bob = make_tenant(), make_tenant()
        alice_tasks = [submit(alice) for _ in range(6)]
        bob_task = submit(bob)
        # Alice already runs two: the pool has 4 slots, so 2 places are free.
        AITask.objects.filter(id__in=alice_tasks[:2]).update(status="processing", dispatched_at=timezone.now())
        pool_register(queue="default", node="w1", slots=4, ttl_s=30)
        report = fill()
        assert (report.window, report.outstanding, report.sent) == (4, 2, 2)
        assert sorted(broker.task_ids("default")) == sorted([bob_task, alice_tasks[2]])
        assert fill().sent == 0  # full
        assert AITask.objects.get(id=bob_task).dispatch_count == 1

    def test_a_dispatch_policy_caps_an_organization_while_another_waits(
        self, make_tenant, broker, settings, fill
    ) -> None:
        settings.DISPATCH_HEADROOM = 0
        alice, bob = make_tenant(), make_tenant()
        DispatchPolicy.objects.create(organization_id=alice.organization_id, max_in_flight=1)
        alice_tasks = [submit(alice) for _ in range(5)]
        bob_tasks = [submit(bob) for _ in range(5)]
        pool_register(queue="default", node="w1", slots=4, ttl_s=30)
        assert fill().sent == 4
        sent = set(broker.task_ids("default"))
        assert len(sent & set(alice_tasks)) == 1 and len(sent & set(bob_tasks)) == 3

    def test_retries_wait_at_the_gate_until_they_are_due(self, tenant, broker, fill) -> None:
        task_id = submit(tenant)
        pool_register(queue="default", node="w1", slots=4, ttl_s=30)
        AITask.objects.filter(id=task_id).update(available_at=timezone.now() + timedelta(minutes=1))
        assert fill().sent == 0
        AITask.objects.filter(id=task_id).update(available_at=timezone.now() - timedelta(seconds=1))
        assert fill().sent == 1 and broker.task_ids("default") == [task_id]

    def test_each_queue_has_its_own_window(self, tenant, broker, fill) -> None:
        high = submit(tenant, priority="high")
        pool_register(queue="default", node="w1", slots=4, ttl_s=30)
        assert fill("default").sent == 0 and fill("priority").sent == 0  # no priority worker
        pool_register(queue="priority", node="w2", slots=1, ttl_s=30)
        assert fill("priority").sent == 1 and broker.task_ids("priority") == [high]
