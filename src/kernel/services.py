"""Kernel services: the transactional outbox, its dead letters and idempotent request
execution (``kernel.idempotency``, re-exported here).

The outbox: ``event_publish`` must run inside the caller's transaction and kicks the
relay after commit (debounced through Redis). The relay records one ``EventDelivery``
per event and subscriber and marks the events published in one transaction, then sends
one ``kernel.handle_events`` message per subscriber and event type for the batch; the
handler's task confirms the deliveries it is done with, and the relay sends again the
ones nobody confirmed in time. An event a subscriber cannot handle after its last
attempt becomes an ``EventDeadLetter``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta
from time import sleep
from typing import Any
from uuid import UUID

import structlog
from celery import Celery, current_app
from django.conf import settings
from django.db import transaction
from django.db.models import BooleanField, F, Q
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.module_loading import import_string
from django_redis import get_redis_connection
from pydantic import ValidationError
from redis.exceptions import RedisError

from contracts.events import EVENT_TYPES, DomainEvent
from kernel.errors import DomainError, NotFoundError
from kernel.idempotency import IDEMPOTENCY_TTL as IDEMPOTENCY_TTL
from kernel.idempotency import IN_FLIGHT_TAKEOVER as IN_FLIGHT_TAKEOVER
from kernel.idempotency import IdempotencyInFlight as IdempotencyInFlight
from kernel.idempotency import IdempotencyMismatch as IdempotencyMismatch
from kernel.idempotency import StoredResponse as StoredResponse
from kernel.idempotency import idempotency_cleanup as idempotency_cleanup
from kernel.idempotency import idempotent_execute as idempotent_execute
from kernel.idempotency import request_fingerprint as request_fingerprint
from kernel.models import EventDeadLetter, EventDelivery, OutboxEvent

log = structlog.get_logger(__name__)

# -- outbox -----------------------------------------------------------------------------

HANDLE_EVENT = "kernel.handle_event"  # one subscriber, one event: retries and replays
HANDLE_EVENTS = "kernel.handle_events"  # one subscriber, a relay batch of events
RELAY_OUTBOX = "kernel.relay_outbox"
# "A relay message is on its way": kicks after commit send one only when they set it.
RELAY_SCHEDULED_KEY = "sy:outbox:relay-scheduled"
RELAY_SCHEDULED_TTL_S = 10  # a lost relay message blocks kicks this long (beat relays every 5 s)
# ``_redeliver_unconfirmed`` waits at most an hour between two sends: a delivery whose
# ``sent_at`` is this old is due at the next relay, whatever its ``sends``.
_DUE_NOW = timedelta(hours=1)
_subscribers: dict[str, list[str]] = {}


def event_subscribe(event_type: str, handler: str) -> None:
    """Register a handler (dotted path to ``def handler(event: DomainEvent) -> None``).

    Contexts call this from ``AppConfig.ready``. Handlers run on a worker, at least once:
    they must be idempotent (use ``event.event_id``).
    """
    handlers = _subscribers.setdefault(event_type, [])
    if handler not in handlers:
        handlers.append(handler)


def event_subscribers(event_type: str) -> list[str]:
    return list(_subscribers.get(event_type, []))


def event_publish(event: DomainEvent) -> None:
    """Write ``event`` to the outbox in the current transaction; relay after commit."""
    OutboxEvent.objects.create(
        event_id=event.event_id, event_type=event.event_type, payload=event.model_dump(mode="json")
    )
    transaction.on_commit(_kick_relay)


def _kick_relay() -> None:
    """Ask for a relay, unless one is already on its way (debounced through Redis).

    No wake-up is lost: ``outbox_relay_drain`` deletes the key *before* it selects. A
    kick that finds the key set ran before that delete, so its event (committed before
    the kick) is visible to the select that follows; a kick after the delete sets the key
    and sends a relay of its own. A relay message the broker lost holds the key for
    ``RELAY_SCHEDULED_TTL_S`` at most, and beat relays every 5 s regardless.
    """
    try:
        scheduled = bool(get_redis_connection("default").set(RELAY_SCHEDULED_KEY, 1, nx=True, ex=RELAY_SCHEDULED_TTL_S))
    except RedisError:  # cannot tell: send one per commit, as without the debounce
        scheduled = True
    if not scheduled:
        return
    try:
        current_app.send_task(RELAY_OUTBOX)
    except Exception:  # the beat schedule relays what this misses
        log.warning("outbox_kick_failed", exc_info=True)
        with contextlib.suppress(RedisError):  # let the next commit try again
            get_redis_connection("default").delete(RELAY_SCHEDULED_KEY)


def outbox_relay_drain(*, gather_s: float = 0.0) -> int:
    """The relay task: relay batches until none is left (or the broker refuses); return
    how many events were published.

    ``gather_s``: wait this long first, with the "scheduled" key still set, so the events
    committed meanwhile ride in this relay instead of kicking one each: at a steady rate
    the relay, the subscribers' messages and their confirms each carry a batch. Issue 9's
    worker profile: one relay per event cost the priority and low pools about 8 ms of CPU
    per task each (``bench.worker_profile``).
    """
    if gather_s > 0:
        sleep(gather_s)
    with contextlib.suppress(RedisError):  # before the select: see ``_kick_relay``
        get_redis_connection("default").delete(RELAY_SCHEDULED_KEY)
    total = 0
    while (published := outbox_relay()) > 0:
        total += published
    return total


def outbox_relay(*, batch_size: int = 100, app: Celery | None = None) -> int:
    """Publish up to ``batch_size`` unpublished events, one message per subscriber and
    event type for the whole batch, and send again the deliveries nobody confirmed in
    time; return how many events were published (0 when the broker refused: the caller
    stops, and the next relay sends what is due).

    The deliveries are recorded and the events marked published in one transaction, and
    the messages go out only after its commit, so a handler's confirm always finds its
    delivery. Rows are locked with SKIP LOCKED: overlapping relays never take the same
    event. A broker that refuses a message leaves its deliveries due for
    ``_redeliver_unconfirmed`` at the next relay; a crash between the commit and the sends
    leaves them unconfirmed, sent again after ``OUTBOX_REDELIVER_AFTER_S`` like a message
    the broker lost (at least once: handlers are idempotent by event id).
    """
    app = app or current_app
    with transaction.atomic():
        events = list(
            OutboxEvent.objects.select_for_update(skip_locked=True)
            .filter(published_at__isnull=True)
            .order_by("created_at")[:batch_size]
        )
        if not events:
            deliveries: list[EventDelivery] = []
        else:
            now = timezone.now()
            deliveries = [
                EventDelivery(event=event, handler=handler, sent_at=now)
                for event in events
                for handler in event_subscribers(event.event_type)
            ]
            EventDelivery.objects.bulk_create(deliveries, ignore_conflicts=True)
            OutboxEvent.objects.filter(pk__in=[event.pk for event in events]).update(
                published_at=now, attempts=F("attempts") + 1
            )
    if not _deliveries_send(app, deliveries):
        return 0
    _redeliver_unconfirmed(app, batch_size=batch_size)
    return len(events)


def _redeliver_unconfirmed(app: Celery, *, batch_size: int) -> int:
    """Deliveries sent ``OUTBOX_REDELIVER_AFTER_S`` x 2^(sends - 1) ago (at most an hour
    between two sends) and still unconfirmed: the broker lost them, or their handler is
    still retrying (a copy is harmless then: handlers are idempotent). Claimed (sent_at,
    sends) and committed first, then sent, like new deliveries."""
    base = settings.OUTBOX_REDELIVER_AFTER_S
    due = RawSQL(
        "sent_at + make_interval(secs => least(%s * power(2, least(sends - 1, 12)), 3600)) <= now()",
        (base,),
        output_field=BooleanField(),
    )
    with transaction.atomic():
        deliveries = list(
            EventDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("event")
            .filter(confirmed_at__isnull=True)
            .filter(due)
            .order_by("sent_at")[:batch_size]
        )
        if deliveries:
            EventDelivery.objects.filter(pk__in=[d.pk for d in deliveries]).update(
                sent_at=timezone.now(), sends=F("sends") + 1
            )
    if deliveries and _deliveries_send(app, deliveries):
        log.info("outbox_redelivered", deliveries=len(deliveries))
        return len(deliveries)
    return 0


def _deliveries_send(app: Celery, deliveries: list[EventDelivery]) -> bool:
    """Send committed deliveries, one ``kernel.handle_events`` message per (handler,
    event type); False when the broker refused one. What was not sent is made due for
    the next relay, with its ``sends`` taken back (it counts messages the broker took)."""
    groups: dict[tuple[str, str], list[EventDelivery]] = {}
    for delivery in deliveries:
        groups.setdefault((delivery.handler, delivery.event.event_type), []).append(delivery)
    batches = list(groups.items())
    for sent, ((handler, event_type), group) in enumerate(batches):
        try:
            app.send_task(HANDLE_EVENTS, args=[handler, event_type, [d.event.payload for d in group]])
        except Exception as exc:  # kombu raises a variety of connection errors
            _deliveries_make_due(batches[sent:], error=f"{type(exc).__name__}: {exc}")
            return False
    return True


def _deliveries_make_due(batches: list[tuple[tuple[str, str], list[EventDelivery]]], *, error: str) -> None:
    unsent = Q()
    for (handler, _), group in batches:
        unsent |= Q(handler=handler, event_id__in=[d.event_id for d in group])
    EventDelivery.objects.filter(unsent).update(sent_at=timezone.now() - _DUE_NOW, sends=F("sends") - 1)
    event_ids = {d.event_id for _, group in batches for d in group}
    OutboxEvent.objects.filter(pk__in=event_ids).update(last_error=error[:500])
    log.warning("outbox_publish_failed", deliveries=sum(len(g) for _, g in batches), error=error[:200])


def event_delivery_confirm(*, handler: str, payload: dict[str, Any]) -> None:
    """The handler's task is done with this event (handled, or dead-lettered)."""
    event_deliveries_confirm(handler=handler, payloads=[payload])


def event_deliveries_confirm(*, handler: str, payloads: list[dict[str, Any]]) -> int:
    """The handler's task is done with these events: one UPDATE, through the unique
    indexes on ``OutboxEvent.event_id`` and (event, handler). Return how many rows it
    confirmed (a copy handled twice confirms nothing the second time)."""
    event_ids = [event_id for payload in payloads if (event_id := _event_id(payload)) is not None]
    if not event_ids:
        return 0
    return EventDelivery.objects.filter(
        event__in=OutboxEvent.objects.filter(event_id__in=event_ids).values("pk"),
        handler=handler,
        confirmed_at__isnull=True,
    ).update(confirmed_at=timezone.now())


class EventNotHandleable(Exception):
    """No retry can help: this release does not know the event type, or the payload
    does not validate. The event goes to the dead letters at once."""


def event_handle(*, handler: str, event_type: str, payload: dict[str, Any]) -> None:
    """Run one subscriber for one event (called by the ``kernel.handle_event`` task).

    Raises ``EventNotHandleable`` for an event no retry can help, and whatever the
    handler raises otherwise (the task retries it).
    """
    event_class = EVENT_TYPES.get(event_type)
    if event_class is None:
        raise EventNotHandleable(f"unknown event type {event_type!r}")
    try:
        event = event_class.model_validate(payload)
    except ValidationError as exc:
        raise EventNotHandleable(str(exc)) from exc
    function: Callable[[DomainEvent], None] = import_string(handler)
    function(event)


def event_dead_letter(*, handler: str, event_type: str, payload: dict[str, Any], attempts: int, error: str) -> None:
    """Keep an event its subscriber gave up on, for the admin to replay.

    One row per (event, handler): a delivery twice over, or a replay that fails again,
    updates the row (and clears ``replayed_at``) instead of adding one.
    """
    event_id = _event_id(payload)
    fields = {"event_type": event_type, "payload": payload, "attempts": attempts, "error": error[:2000]}
    now = timezone.now()
    if event_id is None:
        EventDeadLetter.objects.create(handler=handler, failed_at=now, **fields)
    else:
        EventDeadLetter.objects.update_or_create(
            event_id=event_id, handler=handler, defaults={**fields, "failed_at": now, "replayed_at": None}
        )
    log.error("event_dead_lettered", event_type=event_type, event_id=str(event_id), handler=handler, attempts=attempts)


def _event_id(payload: dict[str, Any]) -> UUID | None:
    try:
        return UUID(str(payload["event_id"]))
    except (KeyError, TypeError, ValueError):
        return None


class EventDeadLetterNotFound(NotFoundError):
    default_detail = "Event dead letter not found."


class BrokerUnavailable(DomainError):
    status_code = 503
    code = "broker_unavailable"
    default_detail = "The broker did not accept the event; try again."


def event_dead_letter_replay(*, dead_letter_id: int, app: Celery | None = None) -> None:
    """Send a dead-lettered event to its handler again, with a fresh retry count.

    Marked, then sent, in one transaction holding the row: a broker outage rolls the
    mark back, and a worker that fails the replay at once waits for this commit before
    it records the new failure (which clears the mark again).
    """
    with transaction.atomic():
        letter = EventDeadLetter.objects.select_for_update().filter(pk=dead_letter_id).first()
        if letter is None:
            raise EventDeadLetterNotFound()
        EventDeadLetter.objects.filter(pk=letter.pk).update(replayed_at=timezone.now())
        try:
            (app or current_app).send_task(HANDLE_EVENT, args=[letter.handler, letter.event_type, letter.payload])
        except Exception as exc:  # kombu raises a variety of connection errors
            raise BrokerUnavailable(f"The broker did not accept the event ({type(exc).__name__}).") from exc


def outbox_cleanup(*, older_than: timedelta = timedelta(days=7)) -> int:
    deleted, _ = OutboxEvent.objects.filter(
        published_at__isnull=False, published_at__lt=timezone.now() - older_than
    ).delete()
    return deleted
