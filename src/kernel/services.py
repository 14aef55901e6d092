"""Kernel services: the transactional outbox, its dead letters and idempotent request
execution.

The outbox: ``event_publish`` must run inside the caller's transaction; the relay
publishes committed events to Celery, one ``kernel.handle_event`` message per
subscriber, and marks them published only after the broker accepted them. An event a
subscriber cannot handle after its last attempt becomes an ``EventDeadLetter``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from celery import Celery, current_app
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import BooleanField, F
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.module_loading import import_string
from pydantic import ValidationError

from contracts.events import EVENT_TYPES, DomainEvent
from kernel.errors import ConflictError, DomainError, NotFoundError
from kernel.models import EventDeadLetter, EventDelivery, IdempotencyRecord, OutboxEvent

log = structlog.get_logger(__name__)

# -- outbox -----------------------------------------------------------------------------

HANDLE_EVENT = "kernel.handle_event"
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
    try:
        current_app.send_task("kernel.relay_outbox")
    except Exception:  # the beat schedule relays what this misses
        log.warning("outbox_kick_failed", exc_info=True)


def outbox_relay(*, batch_size: int = 100, app: Celery | None = None) -> int:
    """Publish up to ``batch_size`` unpublished events, one message per subscriber, and
    send again the deliveries nobody confirmed in time (a broker that lost them); return
    how many events were published.

    Rows are locked with SKIP LOCKED, so overlapping relays never publish one event twice
    from the same batch; a crash between publish and commit may republish (at least once:
    handlers are idempotent by event id).
    """
    app = app or current_app
    published = 0
    with transaction.atomic():
        events = list(
            OutboxEvent.objects.select_for_update(skip_locked=True)
            .filter(published_at__isnull=True)
            .order_by("created_at")[:batch_size]
        )
        for event in events:
            handlers = event_subscribers(event.event_type)
            try:
                for handler in handlers:
                    app.send_task(HANDLE_EVENT, args=[handler, event.event_type, event.payload])
            except Exception as exc:  # broker down: keep it for the next relay
                OutboxEvent.objects.filter(pk=event.pk).update(
                    attempts=event.attempts + 1, last_error=f"{type(exc).__name__}: {exc}"[:500]
                )
                log.warning("outbox_publish_failed", event_id=str(event.event_id), error=type(exc).__name__)
                break
            now = timezone.now()
            OutboxEvent.objects.filter(pk=event.pk).update(published_at=now, attempts=event.attempts + 1)
            EventDelivery.objects.bulk_create(
                [EventDelivery(event=event, handler=handler, sent_at=now) for handler in handlers],
                ignore_conflicts=True,
            )
            published += 1
    _redeliver_unconfirmed(app, batch_size=batch_size)
    return published


def _redeliver_unconfirmed(app: Celery, *, batch_size: int) -> int:
    """Deliveries sent ``OUTBOX_REDELIVER_AFTER_S`` x 2^(sends - 1) ago (at most an hour
    between two sends) and still unconfirmed: the broker lost them, or their handler is
    still retrying (a copy is harmless then: handlers are idempotent)."""
    base = settings.OUTBOX_REDELIVER_AFTER_S
    due = RawSQL(
        "sent_at + make_interval(secs => least(%s * power(2, least(sends - 1, 12)), 3600)) <= now()",
        (base,),
        output_field=BooleanField(),
    )
    resent = 0
    with transaction.atomic():
        deliveries = list(
            EventDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("event")
            .filter(confirmed_at__isnull=True)
            .filter(due)
            .order_by("sent_at")[:batch_size]
        )
        for delivery in deliveries:
            try:
                app.send_task(HANDLE_EVENT, args=[delivery.handler, delivery.event.event_type, delivery.event.payload])
            except Exception as exc:
                log.warning("outbox_redeliver_failed", event_id=str(delivery.event.event_id), error=type(exc).__name__)
                break
            EventDelivery.objects.filter(pk=delivery.pk).update(sent_at=timezone.now(), sends=F("sends") + 1)
            resent += 1
    if resent:
        log.info("outbox_redelivered", deliveries=resent)
    return resent


def event_delivery_confirm(*, handler: str, payload: dict[str, Any]) -> None:
    """The handler's task is done with this event (handled, or dead-lettered)."""
    event_id = _event_id(payload)
    if event_id is not None:
        EventDelivery.objects.filter(event__event_id=event_id, handler=handler, confirmed_at__isnull=True).update(
            confirmed_at=timezone.now()
        )


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


# -- idempotency ------------------------------------------------------------------------

IDEMPOTENCY_TTL = timedelta(hours=24)
# Rows are only ever committed complete; an in-flight row comes from an older release
# (one transaction per step) and is taken over after this long.
IN_FLIGHT_TAKEOVER = timedelta(minutes=5)


class IdempotencyInFlight(ConflictError):
    code = "idempotency_in_flight"
    default_detail = "A request with this Idempotency-Key is still being processed."


class IdempotencyMismatch(DomainError):
    status_code = 422
    code = "idempotency_key_reused"
    default_detail = "This Idempotency-Key was used with a different request body."


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: Any
    headers: dict[str, str]
    replayed: bool


def request_fingerprint(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def idempotent_execute(
    *, scope: str, key: str, fingerprint: str, operation: Callable[[], tuple[int, Any, dict[str, str]]]
) -> StoredResponse:
    """Run ``operation`` once per (scope, key) within 24 h and replay its answer after.

    Same key and fingerprint → the first answer again; other fingerprint → 422; while
    the first request is in flight → 409. One transaction holds the key (a transaction
    level advisory lock), the operation's writes and the stored answer: a crash or an
    exception anywhere before the commit leaves nothing behind (the client retries),
    and after the commit a retry finds the answer. No ``in_flight`` row is ever
    committed, so none can be left behind for a takeover to run the operation twice.
    Inside a caller's transaction, that transaction is the unit.
    """
    with transaction.atomic():
        if not _idempotency_lock(scope, key):
            raise IdempotencyInFlight()
        now = timezone.now()
        existing = IdempotencyRecord.objects.filter(scope=scope, key=key).first()
        if existing is not None and not _idempotency_stale(existing, now):
            if existing.fingerprint != fingerprint:
                raise IdempotencyMismatch()
            if existing.status == IdempotencyRecord.Status.IN_FLIGHT:
                raise IdempotencyInFlight()  # left by a release that committed the key first
            assert existing.response_status is not None
            return StoredResponse(existing.response_status, existing.response_body, existing.response_headers, True)
        status, body, headers = operation()
        fields = {
            "fingerprint": fingerprint,
            "status": IdempotencyRecord.Status.COMPLETE,
            "response_status": status,
            "response_body": body,
            "response_headers": headers,
        }
        if existing is None:
            try:  # no savepoint: on a conflict the whole transaction rolls back anyway
                IdempotencyRecord.objects.create(scope=scope, key=key, **fields)
            except IntegrityError:  # only a process that skips the lock (an older release) gets here
                raise IdempotencyInFlight() from None
        else:
            IdempotencyRecord.objects.filter(pk=existing.pk).update(created_at=now, updated_at=now, **fields)
    return StoredResponse(status, body, headers, False)


def _idempotency_lock(scope: str, key: str) -> bool:
    """Take the key for this transaction, or learn that another transaction holds it.

    A lock, not the unique row, decides who runs: a second INSERT of the same key
    would wait for the first transaction instead of answering 409 at once.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", [f"idempotency:{scope}:{key}"])
        row = cursor.fetchone()
    return bool(row and row[0])


def _idempotency_stale(record: IdempotencyRecord, now: datetime) -> bool:
    expired = record.created_at < now - IDEMPOTENCY_TTL
    abandoned = record.status == IdempotencyRecord.Status.IN_FLIGHT and record.updated_at < now - IN_FLIGHT_TAKEOVER
    return expired or abandoned


def idempotency_cleanup() -> int:
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=timezone.now() - IDEMPOTENCY_TTL).delete()
    return deleted
