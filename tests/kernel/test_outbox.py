"""The transactional outbox: written with the change, relayed after commit, kept
through a broker outage."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

import pytest
from celery import Celery, current_app
from django.db import transaction
from redis.exceptions import ConnectionError as RedisConnectionError

from contracts.events import AITaskFinished
from kernel import services
from kernel.models import EventDelivery, OutboxEvent

pytestmark = pytest.mark.django_db
HANDLER = "tests.kernel.handlers.remember"
OTHER = "tests.kernel.handlers.fails_when_marked"


def make_event() -> AITaskFinished:
    now = datetime.now(UTC)
    return AITaskFinished(
        occurred_at=now,
        task_id=uuid.uuid4(),
        organization_id=uuid.uuid4(),
        api_key_id=None,
        status="done",
        model="fake-small",
        priority="normal",
        cached=False,
        attempts=1,
        input_tokens=1,
        output_tokens=2,
        cost_usd=Decimal("0.000001"),
        error_code=None,
        created_at=now,
        started_at=now,
        completed_at=now,
        duration_seconds=0.1,
    )


@pytest.fixture
def subscribed():
    services.event_subscribe(AITaskFinished.event_type, HANDLER)
    yield
    services._subscribers[AITaskFinished.event_type].remove(HANDLER)


def test_event_is_rolled_back_with_the_change() -> None:
    def change() -> None:
        with transaction.atomic():
            services.event_publish(make_event())
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        change()
    assert not OutboxEvent.objects.exists()


def test_relay_sends_one_message_per_subscriber_for_the_whole_batch(subscribed, broker) -> None:
    events = [make_event() for _ in range(3)]
    for event in events:
        services.event_publish(event)
    assert services.outbox_relay() == 3
    calls = broker.calls("low")
    subscribers = services.event_subscribers(AITaskFinished.event_type)
    assert [name for name, _ in calls] == [services.HANDLE_EVENTS] * len(subscribers)  # not one per event
    assert sorted(args[0] for _, args in calls) == sorted(subscribers)
    for _, (_, event_type, payloads) in calls:
        assert event_type == AITaskFinished.event_type
        assert [payload["event_id"] for payload in payloads] == [str(event.event_id) for event in events]
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()
    deliveries = EventDelivery.objects.all()
    assert len(deliveries) == 3 * len(subscribers) and {d.sends for d in deliveries} == {1}
    assert services.outbox_relay() == 0  # nothing left to publish


def dead_broker(monkeypatch: pytest.MonkeyPatch) -> Celery:
    # Celery lets CELERY_BROKER_URL in the environment win over configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    dead = Celery("dead", set_as_current=False)
    dead.conf.task_publish_retry = False
    return dead


def test_broker_outage_after_the_commit_delays_events_never_loses_them(subscribed, broker, monkeypatch) -> None:
    """The deliveries are committed before the sends: a broker that refuses them leaves
    them due (never sent: ``sends`` 0) and the next relay sends them."""
    event = make_event()
    services.event_publish(event)
    assert services.outbox_relay(app=dead_broker(monkeypatch)) == 0
    monkeypatch.undo()
    row = OutboxEvent.objects.get()
    assert row.published_at is not None and row.attempts == 1 and "OperationalError" in row.last_error
    deliveries = EventDelivery.objects.filter(event=row)
    assert {d.handler for d in deliveries} == set(services.event_subscribers(event.event_type))
    assert {(d.sends, d.confirmed_at) for d in deliveries} == {(0, None)}
    assert broker.calls("low") == []
    services.outbox_relay()  # the broker is back: the due deliveries go out at once
    calls = broker.calls("low")
    assert sorted(args[0] for _, args in calls) == sorted(d.handler for d in deliveries)
    assert {args[2][0]["event_id"] for _, args in calls} == {str(event.event_id)}
    assert {d.sends for d in deliveries.all()} == {1}
    broker.clear("low")
    services.outbox_relay()
    assert broker.calls("low") == []  # sent once, not again until it is due


class FailsAfter:
    """A Celery app whose broker takes ``accepted`` messages, then refuses."""

    def __init__(self, accepted: int) -> None:
        self.accepted = accepted

    def send_task(self, name: str, args: list[Any], **options: Any) -> None:
        if self.accepted == 0:
            raise ConnectionError("the broker went away")
        self.accepted -= 1
        current_app.send_task(name, args=args, **options)


def test_a_broker_lost_mid_batch_keeps_only_the_unsent_deliveries_due(broker, monkeypatch) -> None:
    monkeypatch.setitem(services._subscribers, AITaskFinished.event_type, [HANDLER, OTHER])
    events = [make_event() for _ in range(2)]
    for event in events:
        services.event_publish(event)
    assert services.outbox_relay(app=cast("Celery", FailsAfter(1))) == 0
    [(_, (sent_to, _, payloads))] = broker.calls("low")
    assert len(payloads) == 2
    unsent_to = OTHER if sent_to == HANDLER else HANDLER
    sends = {d.handler: d.sends for d in EventDelivery.objects.all()}
    assert sends == {sent_to: 1, unsent_to: 0}
    broker.clear("low")
    services.outbox_relay()
    assert [args[0] for _, args in broker.calls("low")] == [unsent_to]
    assert {d.sends for d in EventDelivery.objects.all()} == {1}


def test_a_burst_of_commits_sends_one_relay_message(subscribed, broker, django_capture_on_commit_callbacks) -> None:
    for _ in range(5):
        with django_capture_on_commit_callbacks(execute=True):
            services.event_publish(make_event())
    assert broker.calls("priority") == [(services.RELAY_OUTBOX, [])]


def test_the_relay_task_gathers_the_events_committed_while_it_waits(
    subscribed, broker, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    """With the default gather window, commits during the wait send no relay message of
    their own and ride in this relay: one subscriber message for all of them."""
    from django.conf import settings

    from kernel.tasks import relay_outbox_task

    assert settings.OUTBOX_RELAY_GATHER_S > 0  # the production default, not a test value
    with django_capture_on_commit_callbacks(execute=True):
        services.event_publish(make_event())
    assert broker.calls("priority") == [(services.RELAY_OUTBOX, [])]
    broker.clear("priority")
    waited: list[float] = []

    def commits_meanwhile(seconds: float) -> None:
        waited.append(seconds)
        for _ in range(3):
            with django_capture_on_commit_callbacks(execute=True):
                services.event_publish(make_event())

    monkeypatch.setattr(services, "sleep", commits_meanwhile)  # the relay's wait only, not time.sleep
    assert relay_outbox_task.apply().get() == 4
    assert waited == [settings.OUTBOX_RELAY_GATHER_S]
    assert broker.calls("priority") == []  # the window's kicks found the relay on its way
    calls = broker.calls("low")  # one message per subscriber (the apps' own ones and HANDLER)
    subscribers = services.event_subscribers(AITaskFinished.event_type)
    assert [name for name, _ in calls] == [services.HANDLE_EVENTS] * len(subscribers)
    assert {args[0]: len(args[2]) for _, args in calls}[HANDLER] == 4


def test_an_event_committed_after_the_relay_started_kicks_a_relay_of_its_own(
    subscribed, broker, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    """The relay deletes the "scheduled" key before it selects: a commit after that
    delete (which that select may miss) sends a relay message of its own."""
    from kernel.tasks import relay_outbox_task

    with django_capture_on_commit_callbacks(execute=True):
        services.event_publish(make_event())
    relay = services.outbox_relay
    late = make_event()

    def relay_then_commit_one_more(**kwargs: Any) -> int:
        published = relay(**kwargs)
        if not OutboxEvent.objects.filter(event_id=late.event_id).exists():
            with django_capture_on_commit_callbacks(execute=True):
                services.event_publish(late)
        return published

    monkeypatch.setattr(services, "outbox_relay", relay_then_commit_one_more)
    relay_outbox_task.apply()
    assert broker.calls("priority") == [(services.RELAY_OUTBOX, [])] * 2
    monkeypatch.undo()
    relay_outbox_task.apply()  # the second relay message
    assert not OutboxEvent.objects.filter(published_at__isnull=True).exists()


def test_kicks_are_not_debounced_while_redis_is_down(
    subscribed, broker, django_capture_on_commit_callbacks, monkeypatch
) -> None:
    def down(alias: str) -> Any:
        raise RedisConnectionError("Redis is down")

    monkeypatch.setattr(services, "get_redis_connection", down)
    for _ in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            services.event_publish(make_event())
    assert broker.calls("priority") == [(services.RELAY_OUTBOX, [])] * 3


def test_handler_receives_the_typed_event(subscribed) -> None:
    from tests.kernel import handlers

    event = make_event()
    services.event_handle(handler=HANDLER, event_type=event.event_type, payload=event.model_dump(mode="json"))
    assert handlers.received == [event]
    with pytest.raises(services.EventNotHandleable):  # the task dead-letters it
        services.event_handle(handler=HANDLER, event_type="unknown.type", payload={})
    assert len(handlers.received) == 1


def test_a_delivery_the_broker_lost_is_sent_again_until_its_handler_confirms(subscribed, settings, broker) -> None:
    """The relay records one delivery per subscriber; a delivery nobody confirmed in time
    (Redis restarted empty lost the message) is sent again, less and less often; the
    handler's task confirms it and the re-sends stop."""
    from datetime import timedelta

    from django.utils import timezone

    from kernel.tasks import handle_event_task

    settings.OUTBOX_REDELIVER_AFTER_S = 10
    event = make_event()
    services.event_publish(event)
    assert services.outbox_relay() == 1
    deliveries = EventDelivery.objects.filter(event__event_id=event.event_id)
    assert {d.handler for d in deliveries} == set(services.event_subscribers(event.event_type))
    broker.clear("low")  # the broker lost every message
    assert services.outbox_relay() == 0 and broker.calls("low") == []  # not due yet
    deliveries.update(sent_at=timezone.now() - timedelta(seconds=11))
    assert services.outbox_relay() == 0
    resent = broker.calls("low")
    assert sorted(args[0] for _, args in resent) == sorted(d.handler for d in deliveries)
    assert {d.sends for d in deliveries.all()} == {2}
    # The second copy waits twice as long.
    broker.clear("low")
    deliveries.update(sent_at=timezone.now() - timedelta(seconds=15))
    services.outbox_relay()
    assert broker.calls("low") == []
    # The handler runs (from the re-sent copy) and confirms: nothing is sent any more.
    handle_event_task.apply(args=(HANDLER, event.event_type, event.model_dump(mode="json")))
    mine = deliveries.get(handler=HANDLER)
    assert mine.confirmed_at is not None
    deliveries.update(sent_at=timezone.now() - timedelta(hours=2))
    services.outbox_relay()
    assert HANDLER not in [args[0] for _, args in broker.calls("low")]
