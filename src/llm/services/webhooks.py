"""Webhook delivery (SPEC §5): when a task with a ``callback_url`` ends, POST it there,
signed, retried with backoff, dead-lettered after the last attempt.

Signature: ``Switchyard-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=...]`` over
``f"{t}.{body}"`` with the organization's signing secret (``webhook_secret``;
``manage.py webhook_secret <org>`` prints it). During a rotation of
WEBHOOK_SIGNING_SECRETS there is one ``v1`` per active secret, newest first: a receiver
accepts the request when any ``v1`` matches its secret, and rejects timestamps older
than a few minutes (docs/webhooks.md).

Delivery (docs/decisions/webhook-delivery.md):
- one delivery at a time: a conditional UPDATE claims the webhook (lease and attempt
  counter in the same statement), so a duplicated message cannot POST twice;
- the name is resolved once; every address must be public (IPv6 forms embedding an IPv4
  address are judged by that address), and the request goes to the vetted address with
  the name in ``Host`` and in TLS SNI, so a second DNS answer is never used. Private
  destinations are allowed only with WEBHOOK_ALLOW_PRIVATE=true (still pinned).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import random
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit
from uuid import UUID

import httpx
import structlog
from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from contracts.llm import WebhookOutcome
from llm.models import AITask, DeadLetter
from llm.services.mapping import to_task

log = structlog.get_logger(__name__)
SIGNATURE_HEADER = "Switchyard-Signature"
# A retry message may run this much before its due time (clocks of two workers).
EARLY_TOLERANCE = timedelta(seconds=1)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: local use, never public
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


DELIVER_WEBHOOK = "llm.deliver_webhook"


def enqueue_webhook(task_id: UUID, *, countdown: float | None = None) -> None:
    """Queue a delivery of the task's webhook (``llm.deliver_webhook``, on ``default``)."""
    try:
        current_app.send_task(DELIVER_WEBHOOK, args=[str(task_id)], countdown=countdown)
    except Exception as exc:  # the sweeper picks up webhooks left pending
        log.warning("webhook_enqueue_failed", task_id=str(task_id), error=type(exc).__name__)


class _Refused(Exception):
    """The destination may not be called (private address); not worth retrying."""


@dataclass(frozen=True, slots=True)
class PinnedRequest:
    """Where the POST really goes: the vetted address, with the name kept for HTTP and TLS."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, str] = field(default_factory=dict)


def webhook_secrets(*, organization_id: UUID) -> list[str]:
    """The organization's signing secrets, newest first, one per WEBHOOK_SIGNING_SECRETS
    entry: derived, so nothing is stored, and rotating the setting rotates every
    organization's secret."""
    return [
        "whsec_" + hmac.new(master.encode(), f"webhook:{organization_id}".encode(), hashlib.sha256).hexdigest()
        for master in settings.WEBHOOK_SIGNING_SECRETS
    ]


def webhook_secret(*, organization_id: UUID) -> str:
    """The secret that signs from now on (the first of WEBHOOK_SIGNING_SECRETS)."""
    return webhook_secrets(organization_id=organization_id)[0]


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signature_header(*, secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """``t=<ts>,v1=<newest>[,v1=<previous>]``: one signature per active secret."""
    digests = [webhook_signature(secret=secret, timestamp=timestamp, body=body).split(",", 1)[1] for secret in secrets]
    return ",".join([f"t={timestamp}", *digests])


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, compatible)."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64_WELL_KNOWN or ip in _IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public_address(ip: IPAddress) -> bool:
    """Global, and so is any IPv4 address it embeds (``64:ff9b::7f00:1`` is loopback)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        embedded = _embedded_ipv4(ip)
        if embedded is not None and not embedded.is_global:
            return False
    return ip.is_global


def system_resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConnectionError(f"cannot resolve {host}") from exc
    return [str(info[4][0]) for info in infos]


def pin_destination(url: str, *, resolve: Resolver = system_resolve) -> PinnedRequest:
    """Resolve the callback's host once, vet every address, and aim the request at the
    first one. Raises _Refused for a non-public destination, ConnectionError when the
    name does not resolve."""
    parts = urlsplit(url)
    try:
        # The ASCII (IDNA) form goes into DNS, Host and SNI.
        host = (parts.hostname or "").encode("idna").decode("ascii")
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except (UnicodeError, ValueError) as exc:
        raise _Refused(f"malformed callback URL ({type(exc).__name__})") from exc
    if parts.scheme not in {"http", "https"} or not host:
        raise _Refused("malformed callback URL")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = [ipaddress.ip_address(address.split("%", 1)[0]) for address in resolve(host, port)]
    if not addresses:
        raise ConnectionError(f"cannot resolve {host}")
    if not settings.WEBHOOK_ALLOW_PRIVATE and not all(is_public_address(address) for address in addresses):
        raise _Refused(f"{host} resolves to a non-public address")
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = f"{host}:{parts.port}" if parts.port else host
    if ":" in host:  # an IPv6 literal keeps its brackets in Host
        host_header = f"[{host}]:{parts.port}" if parts.port else f"[{host}]"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return PinnedRequest(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        headers={"Host": host_header},
        extensions=extensions,
    )


def _lease() -> timedelta:
    # httpx's timeout bounds each phase (connect, write, read), not the whole request.
    return timedelta(seconds=4 * settings.WEBHOOK_TIMEOUT_S + 5)


def _claim(task_id: UUID) -> AITask | None:
    """Take the webhook with one conditional UPDATE: pending, nobody delivering it, its
    backoff over. The attempt is counted in the same statement; a second copy of the
    message matches nothing (the row lock makes it wait and then re-check)."""
    now = timezone.now()
    claimed = (
        AITask.objects.filter(id=task_id, webhook_status=AITask.WebhookStatus.PENDING)
        .exclude(callback_url__isnull=True)
        .exclude(callback_url="")
        .filter(Q(webhook_claimed_until__isnull=True) | Q(webhook_claimed_until__lte=now))
        .filter(Q(webhook_next_at__isnull=True) | Q(webhook_next_at__lte=now + EARLY_TOLERANCE))
        .update(webhook_attempts=F("webhook_attempts") + 1, webhook_claimed_until=now + _lease())
    )
    if not claimed:
        return None
    return AITask.objects.get(id=task_id)


def webhook_deliver(*, task_id: UUID, resolve: Resolver = system_resolve) -> WebhookOutcome:
    task = _claim(task_id)
    if task is None or not task.callback_url:
        return WebhookOutcome(kind="skipped")
    attempts = task.webhook_attempts
    body = json.dumps(to_task(task).model_dump(mode="json", exclude={"prompt"}), separators=(",", ":")).encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Switchyard-Webhook/1",
        SIGNATURE_HEADER: signature_header(
            secrets=webhook_secrets(organization_id=task.organization_id), timestamp=timestamp, body=body
        ),
    }
    try:
        target = pin_destination(task.callback_url, resolve=resolve)
        # trust_env=False: no proxy from the environment (a proxy would resolve the name again).
        with httpx.Client(timeout=settings.WEBHOOK_TIMEOUT_S, follow_redirects=False, trust_env=False) as client:
            response = client.post(
                target.url, content=body, headers={**headers, **target.headers}, extensions=target.extensions
            )
        if 200 <= response.status_code < 300:
            AITask.objects.filter(pk=task.pk).update(
                webhook_status=AITask.WebhookStatus.DELIVERED,
                webhook_delivered_at=timezone.now(),
                webhook_last_error="",
                webhook_claimed_until=None,
                webhook_next_at=None,
            )
            return WebhookOutcome(kind="delivered")
        error = f"HTTP {response.status_code}"
    except _Refused as exc:
        return _give_up(task, attempts, f"refused: {exc}")
    except (httpx.HTTPError, httpx.InvalidURL, ConnectionError, OSError) as exc:
        error = f"{type(exc).__name__}"
    if attempts >= settings.WEBHOOK_MAX_ATTEMPTS:
        return _give_up(task, attempts, error)
    countdown = _backoff_seconds(attempts)
    AITask.objects.filter(pk=task.pk).update(
        webhook_last_error=error,
        webhook_claimed_until=None,
        webhook_next_at=timezone.now() + timedelta(seconds=countdown),
    )
    return WebhookOutcome(kind="retry", countdown=countdown)


def _backoff_seconds(attempt: int) -> float:
    """Exponential with jitter (receivers that fail together do not retry together), capped."""
    base = settings.WEBHOOK_RETRY_BACKOFF_S * (2 ** max(attempt - 1, 0))
    return float(min(random.uniform(base / 2, base), settings.WEBHOOK_RETRY_BACKOFF_MAX_S))


def _give_up(task: AITask, attempts: int, error: str) -> WebhookOutcome:
    with transaction.atomic():
        AITask.objects.filter(pk=task.pk).update(
            webhook_status=AITask.WebhookStatus.FAILED,
            webhook_last_error=error,
            webhook_claimed_until=None,
            webhook_next_at=None,
        )
        DeadLetter.objects.create(
            task_id=task.pk, kind=DeadLetter.Kind.WEBHOOK, reason=f"webhook: {error}", attempts=attempts
        )
    log.warning("webhook_dead_lettered", task_id=str(task.pk), attempts=attempts, error=error)
    return WebhookOutcome(kind="failed")
