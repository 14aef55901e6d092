"""The relay with a real ``low`` worker: a handler that finishes before the relay could
commit used to lose its confirm (the delivery row was not there yet), and the delivery
was sent again 300 s later. Now the deliveries are committed before the messages go out.
"""

from __future__ import annotations

from typing import Any

import pytest

from contracts.events import AITaskFinished
from kernel import services
from kernel.models import EventDeadLetter, EventDelivery
from tests.kernel import handlers
from tests.kernel.test_outbox import HANDLER, make_event
from tests.pipeline.conftest import start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
__all__ = ["start_worker"]  # the fixture, shared with the pipeline tests
FAILS_ONCE_WHEN_MARKED = "tests.kernel.handlers.fails_once_when_marked"


def all_confirmed(count: int) -> bool:
    return EventDelivery.objects.filter(confirmed_at__isnull=False).count() == count


def test_every_delivery_is_confirmed_on_its_first_send(start_worker: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(services._subscribers, AITaskFinished.event_type, [HANDLER])  # fast: it only remembers
    start_worker("low")
    for _ in range(50):
        services.event_publish(make_event())
    assert services.outbox_relay() == 50
    wait_for(lambda: all_confirmed(50), timeout=30)
    assert set(EventDelivery.objects.values_list("sends", flat=True)) == {1}


def test_a_failing_event_of_a_batch_is_retried_alone_and_the_rest_are_confirmed_together(
    start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(services._subscribers, AITaskFinished.event_type, [FAILS_ONCE_WHEN_MARKED])
    worker = start_worker("low")
    marked = make_event().model_copy(update={"error_code": handlers.MARK})
    for event in [make_event() for _ in range(4)] + [marked] + [make_event() for _ in range(5)]:
        services.event_publish(event)
    assert services.outbox_relay() == 10
    wait_for(lambda: all_confirmed(10), timeout=30)  # the marked one by its retry (0-1 s later)
    assert set(EventDelivery.objects.values_list("sends", flat=True)) == {1}
    confirmed = dict(EventDelivery.objects.values_list("event__event_id", "confirmed_at"))
    [together] = {at for event_id, at in confirmed.items() if event_id != marked.event_id}  # one UPDATE
    retried = confirmed[marked.event_id]
    assert together is not None and retried is not None and retried >= together
    assert not EventDeadLetter.objects.exists()
    log = worker.log_path.read_text()
    assert log.count("kernel.handle_events[") >= 1 and "kernel.handle_event[" in log
