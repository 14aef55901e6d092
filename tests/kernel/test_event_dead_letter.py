"""Events survive their consumers (issue 8, defect 10): an event with a field this
release does not know is consumed, and one a subscriber cannot handle after its last
attempt ends in the dead-letter table, from where the admin replays it.

Retries run eagerly (``Task.apply``): Celery's own retry accounting with the production
count, without waiting out the production backoff.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pydantic
import pytest
from celery import Celery
from django.conf import settings
from django.test import Client
from kombu import Connection

from contracts.llm import TaskSubmission
from kernel import services
from kernel.models import EventDeadLetter, EventDelivery
from kernel.tasks import EVENT_HANDLER_MAX_RETRIES, handle_event_task, handle_events_task
from tests.kernel import handlers
from tests.kernel.test_outbox import HANDLER, make_event
from users.models import User

pytestmark = pytest.mark.django_db
ALWAYS_FAILS = "tests.kernel.handlers.always_fails"
FAILS_WHILE_BROKEN = "tests.kernel.handlers.fails_while_broken"
FAILS_WHEN_MARKED = "tests.kernel.handlers.fails_when_marked"


@pytest.fixture(autouse=True)
def _fresh_handlers() -> Iterator[None]:
    handlers.received.clear()
    handlers.failures.clear()
    handlers.broken["now"] = True
    yield
    handlers.broken["now"] = True
    handlers.received.clear()  # test_outbox reads the list from empty too
    handlers.failures.clear()


@pytest.fixture
def admin_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ops@switchyard.test", "pw"))
    return client


def queued_handle_event(
    task: str = services.HANDLE_EVENT, *, headers: list[dict[str, Any]] | None = None
) -> list[list[Any]]:
    """Take the ``task`` (``kernel.handle_event``) messages off the ``low`` queue; their
    headers go to ``headers`` when given."""
    found = []
    with Connection(settings.CELERY_BROKER_URL) as conn:
        queue = conn.SimpleQueue("low")
        while True:
            try:
                message = queue.get(timeout=1)
            except queue.Empty:
                break
            message.ack()
            if message.headers["task"] == task:
                found.append(message.decode()[0])
                if headers is not None:
                    headers.append(message.headers)
    return found


def test_an_event_with_a_field_this_release_does_not_know_is_consumed() -> None:
    event = make_event()
    payload = {**event.model_dump(mode="json"), "region": "eu-west-1"}  # added by a newer producer
    services.event_handle(handler=HANDLER, event_type=event.event_type, payload=payload)
    assert handlers.received == [event]


def test_service_inputs_stay_strict_about_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match="extra"):
        TaskSubmission.model_validate(
            {"organization_id": make_event().organization_id, "api_key_id": None, "prompt": "p", "model": "m", "x": 1}
        )


def test_a_handler_that_always_raises_ends_in_the_dead_letter_table() -> None:
    assert EVENT_HANDLER_MAX_RETRIES == 8  # the production count, not Celery's default of 3
    event = make_event()
    result = handle_event_task.apply(args=(ALWAYS_FAILS, event.event_type, event.model_dump(mode="json")))
    assert result.successful(), result.traceback  # it ends in the table, not in a traceback
    assert len(handlers.failures) == EVENT_HANDLER_MAX_RETRIES + 1
    letter = EventDeadLetter.objects.get()
    assert (letter.event_id, letter.event_type, letter.handler) == (event.event_id, event.event_type, ALWAYS_FAILS)
    assert letter.attempts == EVENT_HANDLER_MAX_RETRIES + 1
    assert "RuntimeError: this subscriber always fails" in letter.error
    assert letter.payload == event.model_dump(mode="json") and letter.replayed_at is None


def test_an_event_no_retry_can_help_is_dead_lettered_at_once() -> None:
    newer, event = make_event(), make_event()
    handle_event_task.apply(args=(HANDLER, "billing.not_in_this_release", newer.model_dump(mode="json")))
    bad = {**event.model_dump(mode="json"), "task_id": "not-a-uuid"}
    handle_event_task.apply(args=(HANDLER, event.event_type, bad))
    letters = {letter.event_type: letter for letter in EventDeadLetter.objects.all()}
    assert letters["billing.not_in_this_release"].attempts == 1
    assert "unknown event type" in letters["billing.not_in_this_release"].error
    assert letters[event.event_type].attempts == 1 and "task_id" in letters[event.event_type].error
    assert handlers.received == []


def test_admin_replay_re_runs_the_dead_letter(admin_client: Client) -> None:
    event = make_event()
    handle_event_task.apply(args=(FAILS_WHILE_BROKEN, event.event_type, event.model_dump(mode="json")))
    letter = EventDeadLetter.objects.get()
    queued_handle_event()  # start from an empty queue
    assert admin_client.get("/admin/kernel/eventdeadletter/").status_code == 200
    assert admin_client.get(f"/admin/kernel/eventdeadletter/{letter.pk}/change/").status_code == 200
    response = admin_client.post(
        "/admin/kernel/eventdeadletter/", {"action": "replay", "_selected_action": [letter.pk]}, follow=True
    )
    assert "Replayed 1 event(s)." in response.content.decode()
    letter.refresh_from_db()
    assert letter.replayed_at is not None
    [args] = queued_handle_event()  # sent again to its worker queue, with a fresh retry count
    assert args == [FAILS_WHILE_BROKEN, event.event_type, event.model_dump(mode="json")]
    handlers.broken["now"] = False  # the subscriber's bug is fixed; the replay runs it
    assert handle_event_task.apply(args=tuple(args)).successful()
    assert handlers.received == [event]
    assert EventDeadLetter.objects.count() == 1


def test_a_replay_that_fails_again_updates_the_same_letter() -> None:
    event = make_event()
    args = (ALWAYS_FAILS, event.event_type, event.model_dump(mode="json"))
    handle_event_task.apply(args=tuple(args))
    letter = EventDeadLetter.objects.get()
    services.event_dead_letter_replay(dead_letter_id=letter.pk)
    [replayed] = queued_handle_event()
    handle_event_task.apply(args=tuple(replayed))
    again = EventDeadLetter.objects.get()
    assert again.pk == letter.pk and again.replayed_at is None and again.failed_at > letter.failed_at
    assert len(handlers.failures) == 2 * (EVENT_HANDLER_MAX_RETRIES + 1)


def test_the_dead_letter_admin_is_read_only(admin_client: Client) -> None:
    assert admin_client.get("/admin/kernel/eventdeadletter/add/").status_code == 403


def test_a_replay_during_a_broker_outage_keeps_the_letter(monkeypatch: pytest.MonkeyPatch) -> None:
    event = make_event()
    handle_event_task.apply(args=(ALWAYS_FAILS, event.event_type, event.model_dump(mode="json")))
    letter = EventDeadLetter.objects.get()
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")  # Celery lets the environment win
    dead = Celery("dead", set_as_current=False)
    dead.conf.task_publish_retry = False
    with pytest.raises(services.BrokerUnavailable):
        services.event_dead_letter_replay(dead_letter_id=letter.pk, app=dead)
    letter.refresh_from_db()
    assert letter.replayed_at is None
    with pytest.raises(services.EventDeadLetterNotFound):
        services.event_dead_letter_replay(dead_letter_id=letter.pk + 1)


def test_a_batch_confirms_what_it_handled_and_retries_the_failing_event_alone_to_its_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``kernel.handle_events`` is each event's first attempt: the events handled are
    confirmed at once; the one that raised goes on as ``kernel.handle_event`` with one
    attempt spent, so it has the same retries (and dead letter) as before batching."""
    monkeypatch.setitem(services._subscribers, make_event().event_type, [FAILS_WHEN_MARKED])
    good = [make_event() for _ in range(3)]
    bad = make_event().model_copy(update={"error_code": handlers.MARK})
    for event in [good[0], bad, *good[1:]]:
        services.event_publish(event)
    services.outbox_relay()
    [batch] = queued_handle_event(services.HANDLE_EVENTS)
    assert handle_events_task.apply(args=tuple(batch)).successful()
    assert handlers.received == good and handlers.failures == [bad]
    confirmed = dict(EventDelivery.objects.values_list("event__event_id", "confirmed_at"))
    assert all(confirmed[event.event_id] is not None for event in good) and confirmed[bad.event_id] is None
    headers: list[dict[str, Any]] = []
    [retry] = queued_handle_event(headers=headers)
    assert retry == [FAILS_WHEN_MARKED, bad.event_type, bad.model_dump(mode="json")]
    assert headers[0]["retries"] == 1  # its first retry, one attempt spent
    eta = headers[0]["eta"]  # the first retry's backoff: 0 or 1 s (full jitter)
    assert eta is None or datetime.fromisoformat(eta) <= datetime.now(UTC) + timedelta(seconds=1.5)
    assert handle_event_task.apply(args=tuple(retry), retries=1).successful()
    assert handlers.failures == [bad] * (EVENT_HANDLER_MAX_RETRIES + 1)  # as many attempts as one task makes
    letter = EventDeadLetter.objects.get()
    assert (letter.event_id, letter.attempts) == (bad.event_id, EVENT_HANDLER_MAX_RETRIES + 1)
    assert EventDelivery.objects.get(event__event_id=bad.event_id).confirmed_at is not None


def test_a_batch_dead_letters_an_event_no_retry_can_help_at_once() -> None:
    event, poison = make_event(), make_event()
    payloads = [event.model_dump(mode="json"), {**poison.model_dump(mode="json"), "task_id": "not-a-uuid"}]
    assert handle_events_task.apply(args=(HANDLER, event.event_type, payloads)).successful()
    assert handlers.received == [event]
    letter = EventDeadLetter.objects.get()
    assert (letter.event_id, letter.attempts) == (poison.event_id, 1)
    assert queued_handle_event() == []  # no retry
