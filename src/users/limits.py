"""Per-organization and per-API-key limits, and the per-address limit on failed logins.

- Requests per minute, per key and per organization: exact moving windows
  (``kernel.ratelimit``), checked on every API request (``users.api.throttling``) and
  when an SSE stream opens.
- Tokens per minute, per key and per organization: sliding-window counters. A task's
  estimate (prompt estimate + ``max_tokens``) is reserved at submit and corrected to
  the real count when the task settles (``token_usage_correct``).
- Failed authentications per client address: checked before the key lookup, counted
  after a failed one, so a brute force of random keys gets 429 without a query each.

Limits come from settings (0 = unlimited) unless the organization or the key overrides
them (admin). Everything fails open when Redis is down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings

from contracts.users import Principal
from kernel.errors import DomainError
from kernel.ratelimit import Decision, Hit, Limiter, Strategy, hit_all
from users.models import APIKey, Organization

KEY_REQUESTS = Limiter("key-rpm", Strategy.MOVING)
ORG_REQUESTS = Limiter("org-rpm", Strategy.MOVING)
KEY_TOKENS = Limiter("key-tpm", Strategy.SLIDING)
ORG_TOKENS = Limiter("org-tpm", Strategy.SLIDING)
AUTH_FAILURES = Limiter("auth-failures", Strategy.MOVING)
REMEMBER_S = 60.0
REMEMBER_MAX = 10_000


class RateLimited(DomainError):
    status_code = 429
    code = "throttled"
    default_detail = "Too many requests."

    def __init__(self, detail: str | None = None, *, retry_after: int) -> None:
        super().__init__(detail, retry_after=max(1, retry_after))
        self.retry_after = max(1, retry_after)


class TokensRateLimited(RateLimited):
    code = "tokens_throttled"
    default_detail = "Too many tokens requested this minute; retry later."


def _window() -> int:
    return int(settings.RATE_LIMIT_WINDOW_S)


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


# -- requests -------------------------------------------------------------------------


def request_throttle(principal: Principal) -> Decision:
    """Count one request against the key's and the organization's per-minute limits.
    The key is checked first: a key over its own limit does not use up its organization's."""
    window = _window()
    return hit_all(  # one round trip for both
        Hit(
            KEY_REQUESTS,
            str(principal.api_key_id),
            _pick(principal.rate_limit_per_minute, settings.KEY_REQUESTS_PER_MINUTE),
            window,
        ),
        Hit(
            ORG_REQUESTS,
            str(principal.organization_id),
            _pick(principal.organization_requests_per_minute, settings.ORG_REQUESTS_PER_MINUTE),
            window,
        ),
        all_or_nothing=False,
    )


def client_address(meta: Mapping[str, Any]) -> str:
    """The caller's address from a request's ``META``: ``REMOTE_ADDR``, or with
    ``API_TRUSTED_PROXIES=n`` the n-th address from the right of ``X-Forwarded-For``
    (the one the outermost trusted proxy saw)."""
    hops = settings.API_TRUSTED_PROXIES
    if hops > 0:
        forwarded = [a.strip() for a in str(meta.get("HTTP_X_FORWARDED_FOR", "")).split(",") if a.strip()]
        if len(forwarded) >= hops:
            return forwarded[-hops][:64]
    return str(meta.get("REMOTE_ADDR") or "unknown")[:64]


def auth_failure_check(address: str) -> Decision:
    """Before a key lookup: may this address still try?"""
    return AUTH_FAILURES.test(address, limit=settings.AUTH_FAILURES_PER_MINUTE, window_s=_window())


def auth_failure_record(address: str) -> None:
    AUTH_FAILURES.hit(address, limit=settings.AUTH_FAILURES_PER_MINUTE, window_s=_window())


# -- tokens ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _TokenLimits:
    expires: float
    organization: int
    key: int


_remembered: dict[UUID, _TokenLimits] = {}
_remembered_lock = threading.Lock()


def remember(principal: Principal) -> None:
    """Called on every authentication (which already read the key and its organization),
    so the token check at submit needs no query of its own."""
    limits = _TokenLimits(
        expires=time.monotonic() + REMEMBER_S,
        organization=_pick(principal.organization_tokens_per_minute, settings.ORG_TOKENS_PER_MINUTE),
        key=_pick(principal.tokens_per_minute, settings.KEY_TOKENS_PER_MINUTE),
    )
    with _remembered_lock:
        if len(_remembered) >= REMEMBER_MAX:
            _remembered.clear()
        _remembered[principal.api_key_id] = limits


def _token_limits(organization_id: UUID, api_key_id: UUID | None) -> _TokenLimits:
    limits = _remembered.get(api_key_id) if api_key_id is not None else None
    if limits is not None and limits.expires > time.monotonic():
        return limits
    key_override: int | None = None
    org_override: int | None = None
    if api_key_id is not None:
        rows = APIKey.objects.filter(id=api_key_id).values_list("tokens_per_minute", "organization__tokens_per_minute")
        key_override, org_override = rows.first() or (None, None)
    else:
        orgs = Organization.objects.filter(id=organization_id)
        org_override = orgs.values_list("tokens_per_minute", flat=True).first()
    return _TokenLimits(
        expires=0.0,
        organization=_pick(org_override, settings.ORG_TOKENS_PER_MINUTE),
        key=_pick(key_override, settings.KEY_TOKENS_PER_MINUTE) if api_key_id is not None else 0,
    )


def token_usage_reserve(*, organization_id: UUID, api_key_id: UUID | None, tokens: int) -> None:
    """Reserve a task's estimated tokens against the key's and the organization's
    per-minute limits, or raise ``TokensRateLimited`` (429) having reserved nothing.
    A task without a key (``api_key_id=None``) counts against its organization only."""
    limits = _token_limits(organization_id, api_key_id)
    window = _window()
    refusal = hit_all(  # one round trip; a refusal by either reserves nothing on both
        Hit(KEY_TOKENS, str(api_key_id), limits.key, window, tokens),
        Hit(ORG_TOKENS, str(organization_id), limits.organization, window, tokens),
        all_or_nothing=True,
    )
    if refusal.allowed:
        return
    if tokens > min(x for x in (limits.key, limits.organization) if x > 0):
        detail = "This request alone needs more tokens than the per-minute limit allows; lower max_tokens."
        raise TokensRateLimited(detail, retry_after=refusal.retry_after_s)
    raise TokensRateLimited(retry_after=refusal.retry_after_s)


def token_usage_correct(*, organization_id: UUID, api_key_id: UUID | None, estimated: int, actual: int) -> None:
    """When a task settles: replace its reserved estimate by the tokens it really used
    (``actual`` = input + output; 0 for a task that failed without a provider answer).
    Fails open; never raises for Redis."""
    delta = int(actual) - int(estimated)
    window = _window()
    if api_key_id is not None:
        KEY_TOKENS.adjust(str(api_key_id), delta=delta, window_s=window)
    ORG_TOKENS.adjust(str(organization_id), delta=delta, window_s=window)
