"""Which callback URLs a task (or a conversation turn) may carry (SPEC §5 webhooks).

Checked when the URL is given; the delivery resolves the host and checks again."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from django.conf import settings


def is_private_host(host: str) -> bool:
    if host in {"localhost", "localhost.localdomain"} or host.endswith((".localhost", ".internal", ".local")):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False  # a name: resolved and checked again at delivery time
    return not address.is_global


def callback_url_problem(value: str) -> str | None:
    """Why ``value`` is refused as a callback URL, or None when it is acceptable."""
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"}:
        return "callback_url must be an http(s) URL."
    if not settings.WEBHOOK_ALLOW_PRIVATE and is_private_host(parts.hostname or ""):
        return "callback_url must not point to a private address."
    return None
