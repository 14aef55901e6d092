"""Dead letters on a real ``low`` worker: the worker process records the event it
cannot handle, and a replay from the admin's service runs on the worker again.

A poison payload (no retry can help) is dead-lettered at its first attempt, so this
runs in seconds; the retry count itself is proven in test_event_dead_letter.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import current_app

from kernel import services
from kernel.models import EventDeadLetter
from tests.kernel.test_outbox import HANDLER, make_event
from tests.pipeline.conftest import start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
__all__ = ["start_worker"]  # the fixture, shared with the pipeline tests


def test_a_worker_dead_letters_an_event_and_runs_its_replay(start_worker: Any) -> None:
    start_worker("low")
    event = make_event()
    payload = {**event.model_dump(mode="json"), "task_id": "not-a-uuid"}
    current_app.send_task(services.HANDLE_EVENT, args=[HANDLER, event.event_type, payload])
    letter = wait_for(lambda: EventDeadLetter.objects.filter(event_id=event.event_id).first())
    assert isinstance(letter, EventDeadLetter)
    assert letter.attempts == 1 and "task_id" in letter.error and letter.replayed_at is None
    services.event_dead_letter_replay(dead_letter_id=letter.pk)
    again = wait_for(lambda: EventDeadLetter.objects.filter(pk=letter.pk, failed_at__gt=letter.failed_at).first())
    assert isinstance(again, EventDeadLetter)
    assert again.replayed_at is None  # the replay ran and failed again: it is back in the list
    assert EventDeadLetter.objects.count() == 1
