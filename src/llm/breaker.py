"""A circuit breaker per provider model, shared by every worker through Redis.

closed → open after ``LLM_BREAKER_FAILURES`` retryable failures (outages: 5xx,
timeouts, connection errors; not 429s, which are back-pressure handled by
``llm.limits.provider_backoff``) within ``LLM_BREAKER_WINDOW_S`` seconds. While open
(``LLM_BREAKER_COOLDOWN_S``) no call goes to the model: work goes straight to a fallback.
Then half-open: exactly one caller (a ``SET NX`` probe token) tries the model; its success
closes the breaker, its failure opens it again for another cool-down.

State is four keys per model: ``fails`` (a counter expiring with its window), ``open``
(present while open), ``tripped`` (present from opening until a probe succeeds: its
absence after ``open`` expired is "closed", its presence is "half-open") and ``probe``.
A Redis outage leaves every breaker closed (calls go to the primary model, as without a
breaker): the breaker is an optimisation, never a reason to fail work.
"""

from __future__ import annotations

from typing import Literal

import structlog
from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
VERSION = 1
State = Literal["closed", "open", "half_open"]

# KEYS: fails, open, tripped, probe. ARGV: threshold, window_s, cooldown_s, tripped_ttl_s.
# Returns 1 when this failure opened (or re-opened) the breaker.
_FAIL = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
local half_open = redis.call('EXISTS', KEYS[3]) == 1 and redis.call('EXISTS', KEYS[2]) == 0
if half_open or n >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[3])
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[4])
  redis.call('DEL', KEYS[1], KEYS[4])
  return 1
end
return 0
"""


def _key(kind: str, model: str) -> str:
    return f"llm:breaker:v{VERSION}:{model}:{kind}"


def _keys(model: str) -> list[str]:
    return [_key(kind, model) for kind in ("fails", "open", "tripped", "probe")]


def state(model: str) -> State:
    """The breaker's state, without taking the half-open probe (admin, tests)."""
    try:
        client = get_redis_connection("default")
        if client.exists(_key("open", model)):
            return "open"
        return "half_open" if client.exists(_key("tripped", model)) else "closed"
    except RedisError:
        return "closed"


def allow(model: str) -> bool:
    """May a call go to ``model`` now? Closed: yes. Open: no. Half-open: only for the one
    caller that takes the probe token (it expires after a call's hard time limit)."""
    try:
        client = get_redis_connection("default")
        if client.exists(_key("open", model)):
            return False
        if not client.exists(_key("tripped", model)):
            return True
        probe_ttl = max(int(settings.TASK_TIME_LIMIT), 1)
        return bool(client.set(_key("probe", model), "1", nx=True, ex=probe_ttl))
    except RedisError:
        log.warning("breaker_unavailable", model=model, exc_info=True)
        return True


def record_failure(model: str) -> bool:
    """Count a retryable failure of ``model``; True if this one opened the breaker."""
    cooldown = settings.LLM_BREAKER_COOLDOWN_S
    try:
        client = get_redis_connection("default")
        opened = client.eval(
            _FAIL,
            4,
            *_keys(model),
            settings.LLM_BREAKER_FAILURES,
            settings.LLM_BREAKER_WINDOW_S,
            cooldown,
            cooldown * 10 + settings.LLM_BREAKER_WINDOW_S,
        )
    except RedisError:
        log.warning("breaker_unavailable", model=model, exc_info=True)
        return False
    if opened:
        log.warning("breaker_opened", model=model, cooldown_s=cooldown)
    return bool(opened)


def record_success(model: str) -> None:
    """A call to ``model`` answered: a half-open breaker closes."""
    try:
        client = get_redis_connection("default")
        if client.exists(_key("tripped", model)):
            client.delete(*_keys(model))
            log.info("breaker_closed", model=model)
    except RedisError:
        log.warning("breaker_unavailable", model=model, exc_info=True)


def reset(model: str) -> None:
    """Close the breaker at once (staff, tests)."""
    try:
        get_redis_connection("default").delete(*_keys(model))
    except RedisError:
        log.warning("breaker_unavailable", model=model, exc_info=True)
