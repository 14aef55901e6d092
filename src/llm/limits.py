"""Per provider model limits shared by every worker: calls in flight and tokens per minute,
plus back-pressure when the provider answers 429.

- Calls in flight: a Redis sorted set per model of holder ids scored by their expiry
  (Redis server time, so hosts' clocks do not matter). Acquiring drops expired holders,
  then adds itself if fewer than the limit remain — one Lua script, atomic. A holder is
  renewed every third of ``LLM_SLOT_TTL_S`` by one thread per process while its call
  runs; a crashed worker stops renewing and its slots free themselves within the TTL.
- Tokens per minute: a sliding-window counter (``kernel.ratelimit``) per model, taken
  after the slot with the task's estimate and corrected by ``Slot.record_tokens``.
- Back-pressure: ``provider_backoff(model, seconds)`` sets a per-model pause; every
  ``provider_slot`` for that model waits it out (bounded by ``timeout_s``) instead of
  calling the provider.

Settings: ``LLM_MODEL_LIMITS="fake-small=200:1000000,fake-large=50"`` (calls in flight,
then optional tokens per minute; 0 or absent = unlimited). Fails open without Redis.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import structlog
from django.conf import settings
from django_redis import get_redis_connection
from redis.commands.core import Script
from redis.exceptions import RedisError

from contracts.llm import ChatMessage
from kernel.ratelimit import Limiter, Strategy
from llm.providers.tokens import estimate_prompt_tokens, estimate_tokens

log = structlog.get_logger(__name__)
MODEL_TOKENS = Limiter("llm-model-tpm", Strategy.SLIDING)
POLL_S = 0.05

# KEYS: slots zset, backoff key. ARGV: limit, ttl_ms, holder.
# Returns {1, 0} acquired; {0, ms} paused by a back-off for ms more; {0, 0} full.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {0, pause} end
local limit = tonumber(ARGV[1])
if limit <= 0 then return {1, 0} end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then return {0, 0} end
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return {1, 0}
"""
# KEYS: slots zset. ARGV: ttl_ms, holders... Returns how many were still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local renewed = 0
for i = 2, #ARGV do
    renewed = renewed + redis.call('ZADD', KEYS[1], 'XX', 'CH', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return renewed
"""
# KEYS: backoff key. ARGV: ms. Only ever lengthens a pause.
_BACKOFF = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""


class ProviderBusy(Exception):
    """No slot (or no tokens, or a back-off) for ``model`` within ``timeout_s``: put the
    task back without spending an attempt and try again after ``retry_after_s``."""

    def __init__(self, model: str, retry_after_s: float, reason: str) -> None:
        super().__init__(f"provider model {model!r} is busy ({reason}); retry in {retry_after_s:.1f} s")
        self.model = model
        self.retry_after_s = retry_after_s
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ModelLimits:
    in_flight: int = 0
    tokens_per_minute: int = 0


@lru_cache(maxsize=8)
def _parse(spec: str) -> dict[str, ModelLimits]:
    out: dict[str, ModelLimits] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        model, sep, values = item.partition("=")
        numbers = values.split(":")
        if not sep or not model.strip() or len(numbers) > 2 or not all(n.strip().isdigit() for n in numbers):
            raise ValueError(f"LLM_MODEL_LIMITS: {item!r} is not model=calls[:tokens_per_minute]")
        tpm = int(numbers[1]) if len(numbers) == 2 else 0
        out[model.strip()] = ModelLimits(in_flight=int(numbers[0]), tokens_per_minute=tpm)
    return out


def model_limits(model: str) -> ModelLimits:
    return _parse(settings.LLM_MODEL_LIMITS).get(model, ModelLimits())


def input_token_estimate(*, prompt: str, messages: Sequence[Mapping[str, str] | ChatMessage] | None) -> int:
    """The input of a task: the whole message list of a conversation turn (system prompt
    and earlier turns included), else the prompt."""
    if not messages:
        return estimate_tokens(prompt)
    return estimate_prompt_tokens(m.content if isinstance(m, ChatMessage) else m["content"] for m in messages)


def task_token_estimate(
    *, prompt: str, messages: Sequence[Mapping[str, str] | ChatMessage] | None, max_tokens: int
) -> int:
    """What a task may use at most: its input estimate plus ``max_tokens``. The same
    number is reserved at submit and replaced by the real count when the task settles."""
    return input_token_estimate(prompt=prompt, messages=messages) + max_tokens


def _key(kind: str, model: str) -> str:
    return f"{settings.CACHES['default'].get('KEY_PREFIX', 'sy')}:llm:{kind}:{model}"


class _Renewer:
    """One daemon thread per process renews every held slot every third of the TTL."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[str, set[str]] = {}  # slots key -> holder ids
        self.pid = 0
        self.wake = threading.Event()
        self.interval = 0.0  # what the thread is sleeping for

    def add(self, key: str, holder: str) -> None:
        with self.lock:
            if self.pid != os.getpid():  # first use, or a forked child: threads do not survive fork
                self.pid = os.getpid()
                self.held = {}  # a child renews only its own holders
                threading.Thread(target=self._run, name="llm-slot-renewer", daemon=True).start()
            self.held.setdefault(key, set()).add(holder)
        if float(settings.LLM_SLOT_TTL_S) / 3 < self.interval:
            self.wake.set()  # the TTL was shortened: renew on the new schedule at once

    def remove(self, key: str, holder: str) -> None:
        with self.lock:
            holders = self.held.get(key)
            if holders is not None:
                holders.discard(holder)
                if not holders:
                    del self.held[key]

    def _run(self) -> None:
        pid = os.getpid()
        while self.pid == pid:
            self.interval = float(settings.LLM_SLOT_TTL_S) / 3
            self.wake.wait(self.interval)
            self.wake.clear()
            ttl_ms = int(float(settings.LLM_SLOT_TTL_S) * 1000)
            with self.lock:
                batch = {key: sorted(holders) for key, holders in self.held.items()}
            for key, holders in batch.items():
                try:
                    renewed = int(_script(_RENEW)(keys=[key], args=[ttl_ms, *holders]))
                except RedisError:
                    log.warning("llm_slot_renew_failed", key=key, exc_info=True)
                    continue
                if renewed < len(holders):
                    with self.lock:  # released meanwhile is fine; expired while held is not
                        lost = len(self.held.get(key, set()) & set(holders)) - renewed
                    if lost > 0:
                        log.warning("llm_slot_lost", key=key, lost=lost)


_renewer = _Renewer()
_scripts: dict[tuple[int, str], Script] = {}


def _script(source: str) -> Script:
    client = get_redis_connection("default")
    script = _scripts.get((id(client), source))
    if script is None:
        script = _scripts.setdefault((id(client), source), client.register_script(source))
    return script


@dataclass(slots=True)
class Slot:
    """What ``provider_slot`` yields. ``record_tokens`` corrects the model's token count
    from the estimate to what the provider reported."""

    model: str
    holder: str
    tokens_reserved: int
    waited_s: float

    def record_tokens(self, actual: int) -> None:
        if self.tokens_reserved and model_limits(self.model).tokens_per_minute > 0:
            MODEL_TOKENS.adjust(
                self.model, delta=int(actual) - self.tokens_reserved, window_s=settings.RATE_LIMIT_WINDOW_S
            )
            self.tokens_reserved = int(actual)


def _try_acquire(model: str, holder: str, limit: int) -> tuple[bool, float]:
    """(acquired, back-off seconds left). Fails open."""
    ttl_ms = int(float(settings.LLM_SLOT_TTL_S) * 1000)
    try:
        acquired, pause_ms = _script(_ACQUIRE)(
            keys=[_key("slots", model), _key("backoff", model)], args=[limit, ttl_ms, holder]
        )
    except RedisError:
        log.warning("llm_slot_unavailable", model=model, exc_info=True)
        return True, 0.0
    return bool(acquired), int(pause_ms) / 1000


def _sleep(remaining: float, hint: float) -> None:
    time.sleep(_pause_s(remaining, hint))


@contextmanager
def provider_slot(model: str, *, timeout_s: float, tokens: int = 0) -> Iterator[Slot]:
    """Hold one of ``model``'s calls in flight (and reserve ``tokens`` of its tokens per
    minute) for the duration of the block. Waits at most ``timeout_s`` — also while a
    back-off is active — then raises ``ProviderBusy``."""
    limits = model_limits(model)
    started = time.monotonic()
    deadline = started + timeout_s
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    while True:
        acquired, pause = _try_acquire(model, holder, limits.in_flight)
        if acquired:
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            reason = "back-off after a provider 429" if pause else "calls in flight at the limit"
            raise ProviderBusy(model, max(pause, 1.0), reason)
        _sleep(remaining, pause)
    key = _key("slots", model)
    if limits.in_flight > 0:
        _renewer.add(key, holder)
    try:
        reserved = _take_tokens(model, limits.tokens_per_minute, tokens, deadline)
        yield Slot(model=model, holder=holder, tokens_reserved=reserved, waited_s=time.monotonic() - started)
    finally:
        if limits.in_flight > 0:
            _renewer.remove(key, holder)
            _release(key, holder, model)


def _take_tokens(model: str, limit: int, tokens: int, deadline: float) -> int:
    while True:
        taken, wait = _try_tokens(model, limit, tokens, deadline)
        if taken is not None:
            return taken
        _sleep(deadline - time.monotonic(), wait)


def _try_tokens(model: str, limit: int, tokens: int, deadline: float) -> tuple[int | None, float]:
    """(tokens taken, or None and how long to wait). Raises ``ProviderBusy`` past the deadline."""
    if limit <= 0 or tokens <= 0:
        return 0, 0.0
    cost = min(tokens, limit)  # one call larger than a minute's quota still runs, alone
    decision = MODEL_TOKENS.hit(model, limit=limit, cost=cost, window_s=settings.RATE_LIMIT_WINDOW_S)
    if decision.allowed:
        return cost, 0.0
    if deadline - time.monotonic() <= 0:
        raise ProviderBusy(model, float(decision.retry_after_s), "tokens per minute at the limit")
    return None, min(float(decision.retry_after_s), 1.0)


def _pause_s(remaining: float, hint: float) -> float:
    return max(0.0, min(remaining, max(hint, POLL_S) * random.uniform(1.0, 1.5)))


def _release(key: str, holder: str, model: str) -> None:
    try:
        get_redis_connection("default").zrem(key, holder)
    except RedisError:
        log.warning("llm_slot_release_failed", model=model, exc_info=True)  # it expires anyway


def provider_backoff(model: str, seconds: float) -> None:
    """A provider 429 (``Retry-After`` or the retry back-off): pause every worker's calls
    to ``model`` for ``seconds`` (a longer pause already set is kept)."""
    ms = int(max(0.0, seconds) * 1000)
    if ms <= 0:
        return
    try:
        _script(_BACKOFF)(keys=[_key("backoff", model)], args=[ms])
    except RedisError:
        log.warning("llm_backoff_unavailable", model=model, exc_info=True)
    log.info("llm_backoff", model=model, seconds=seconds)


def provider_backoff_remaining(model: str) -> float:
    """Seconds left of ``model``'s back-off (0 when none), e.g. to delay a retry."""
    try:
        ms = int(get_redis_connection("default").pttl(_key("backoff", model)))
    except RedisError:
        return 0.0
    return max(0, ms) / 1000
