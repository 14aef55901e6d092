"""The transactional outbox: written with the change, relayed after commit, kept
through a broker outage."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from celery import Celery
from django.db import transaction
from kombu import Connection

from contracts.events import AITaskFinished
from kernel import services
from kernel.models import OutboxEvent

pytestmark = pytest.mark.django_db
HANDLER = "tests.kernel.handlers.remember"


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


def test_relay_publishes_to_the_broker_and_marks_published(subscribed, settings) -> None:
    event = make_event()
    services.event_publish(event)
    with Connection(settings.CELERY_BROKER_URL) as conn:
        queue = conn.SimpleQueue("low")
        queue.clear()
        assert services.outbox_relay() == 1
        messages = []
        for _ in services.event_subscribers(event.event_type):  # one message per subscriber
            message = queue.get(timeout=5)
            assert message.headers["task"] == "kernel.handle_event"
            messages.append(message.decode()[0])
            message.ack()
    handlers = {handler for handler, _, _ in messages}
    assert HANDLER in handlers
    assert {(event_type, payload["event_id"]) for _, event_type, payload in messages} == {
        (event.event_type, str(event.event_id))
    }
    assert OutboxEvent.objects.get(event_id=event.event_id).published_at is not None
    assert services.outbox_relay() == 0  # nothing left to publish


def test_broker_outage_delays_events_never_loses_them(subscribed, settings, monkeypatch) -> None:
    services.event_publish(make_event())
    # Celery lets CELERY_BROKER_URL in the environment win over configuration.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    dead = Celery("dead", set_as_current=False)
    dead.conf.task_publish_retry = False
    assert services.outbox_relay(app=dead) == 0
    monkeypatch.undo()
    row = OutboxEvent.objects.get()
    assert row.published_at is None and row.attempts == 1 and row.last_error
    with Connection(settings.CELERY_BROKER_URL) as conn:
        conn.SimpleQueue("low").clear()
        assert services.outbox_relay() == 1
        conn.SimpleQueue("low").clear()


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

    from kernel.models import EventDelivery
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
