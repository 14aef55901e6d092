"""Idempotent request execution: ``Idempotency-Key`` (SPEC §4), one transaction per key.

Re-exported by ``kernel.services``, the kernel's service API; split out of it to keep
that module to the outbox.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from kernel.errors import ConflictError, DomainError
from kernel.models import IdempotencyRecord

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
