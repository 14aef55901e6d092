"""Webhook delivery (SPEC §5): when a task with a ``callback_url`` ends, POST it there,
signed, retried with backoff, dead-lettered after the last attempt.

Signature: ``Switchyard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`` over
``f"{t}.{body}"`` with the organization's signing secret (``webhook_secret``;
``manage.py webhook_secret <org>`` prints it). Receivers recompute it and reject
timestamps older than a few minutes. Private, loopback and link-local destinations are
refused at delivery time too (after DNS resolution), unless WEBHOOK_ALLOW_PRIVATE=true.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit
from uuid import UUID

import httpx
import structlog
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from llm.models import AITask, DeadLetter
from llm.services._common import to_task
from llm.services.execution import backoff_seconds

log = structlog.get_logger(__name__)
SIGNATURE_HEADER = "Switchyard-Signature"


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    kind: Literal["delivered", "retry", "failed", "skipped"]
    countdown: float | None = None


class _Refused(Exception):
    """The destination may not be called (private address); not worth retrying."""


def webhook_secret(*, organization_id: UUID) -> str:
    """The organization's signing secret, derived from WEBHOOK_SIGNING_SECRET: nothing to
    store, and rotating the setting rotates every organization's secret."""
    master = settings.WEBHOOK_SIGNING_SECRET.encode()
    return "whsec_" + hmac.new(master, f"webhook:{organization_id}".encode(), hashlib.sha256).hexdigest()


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _check_destination(url: str) -> None:
    if settings.WEBHOOK_ALLOW_PRIVATE:
        return
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ConnectionError(f"cannot resolve {host}") from exc
    for info in infos:
        if not ipaddress.ip_address(info[4][0]).is_global:
            raise _Refused(f"{host} resolves to a non-public address")


def webhook_deliver(*, task_id: UUID) -> WebhookOutcome:
    task = AITask.objects.filter(id=task_id, webhook_status=AITask.WebhookStatus.PENDING).first()
    if task is None or not task.callback_url:
        return WebhookOutcome("skipped")
    attempts = task.webhook_attempts + 1
    AITask.objects.filter(pk=task.pk).update(webhook_attempts=attempts)
    body = json.dumps(to_task(task).model_dump(mode="json", exclude={"prompt"}), separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Switchyard-Webhook/1",
        SIGNATURE_HEADER: webhook_signature(
            secret=webhook_secret(organization_id=task.organization_id), timestamp=timestamp, body=body
        ),
    }
    try:
        _check_destination(task.callback_url)
        response = httpx.post(
            task.callback_url, content=body, headers=headers, timeout=settings.WEBHOOK_TIMEOUT_S, follow_redirects=False
        )
        if 200 <= response.status_code < 300:
            AITask.objects.filter(pk=task.pk).update(
                webhook_status=AITask.WebhookStatus.DELIVERED,
                webhook_delivered_at=timezone.now(),
                webhook_last_error="",
            )
            return WebhookOutcome("delivered")
        error = f"HTTP {response.status_code}"
    except _Refused as exc:
        return _give_up(task, attempts, f"refused: {exc}")
    except (httpx.HTTPError, ConnectionError) as exc:
        error = f"{type(exc).__name__}"
    if attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        return _give_up(task, attempts, error)
    AITask.objects.filter(pk=task.pk).update(webhook_last_error=error)
    return WebhookOutcome("retry", countdown=backoff_seconds(attempts))


def _give_up(task: AITask, attempts: int, error: str) -> WebhookOutcome:
    with transaction.atomic():
        AITask.objects.filter(pk=task.pk).update(webhook_status=AITask.WebhookStatus.FAILED, webhook_last_error=error)
        DeadLetter.objects.create(
            task_id=task.pk, kind=DeadLetter.Kind.WEBHOOK, reason=f"webhook: {error}", attempts=attempts
        )
    log.warning("webhook_dead_lettered", task_id=str(task.pk), attempts=attempts, error=error)
    return WebhookOutcome("failed")
