"""Rate limits that hold across every process: the ``limits`` library on Redis.

Two strategies, each atomic in one Lua script on the Redis server:

- ``MOVING`` (requests): the library's moving window, one list entry per hit; exact —
  at no instant do the last ``window_s`` seconds hold more than ``limit`` hits.
- ``SLIDING`` (tokens): the library's sliding window counter, two counters per key, so
  a cost of 10,000 tokens is one ``INCRBY``, not 10,000 list entries. Approximate
  (it assumes the previous window's hits were spread evenly) but never the 2x burst
  a fixed window allows across its edge.

``adjust`` corrects a sliding-window counter after the fact (a task's estimated tokens
replaced by its actual ones); the library has no refund, so that one script is ours and
follows the library's key layout (tests/kernel/test_ratelimit.py pins it).

Fail-open: when Redis is unreachable every check allows and logs ``ratelimit_unavailable``;
for ``REDIS_DOWN_SKIP_S`` seconds after a failure the process skips Redis altogether, so
an outage costs one socket timeout per process, not one per request and limit.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from dataclasses import dataclass

import structlog
from django.conf import settings
from django_redis import get_redis_connection
from limits import RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter, RateLimiter, SlidingWindowCounterRateLimiter
from redis import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
REDIS_DOWN_SKIP_S = 5.0

# Same shift-then-count steps as the library's acquire_sliding_window.lua, then an
# unconditional INCRBY of the delta; a refund takes from the current window first, then
# the previous one, never below zero. KEYS: previous, current. ARGV: window_s, delta.
_ADJUST_SLIDING = """
local expiry = tonumber(ARGV[1]) * 1000
local delta = tonumber(ARGV[2])
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
if delta > 0 then
    if redis.call('exists', KEYS[2]) == 1 then
        redis.call('incrby', KEYS[2], delta)
    else
        redis.call('set', KEYS[2], delta, 'PX', expiry * 2)
    end
    return delta
end
local refund = -delta
local done = 0
for _, key in ipairs({KEYS[2], KEYS[1]}) do
    if refund > 0 then
        local count = tonumber(redis.call('get', key) or '0')
        local take = math.min(count, refund)
        if take > 0 then
            redis.call('decrby', key, take)
            refund = refund - take
            done = done + take
        end
    end
end
return -done
"""


class Strategy(enum.Enum):
    MOVING = "moving-window"
    SLIDING = "sliding-window-counter"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: int = 0  # whole seconds (≥ 1) when refused

    @classmethod
    def allow(cls) -> Decision:
        return cls(True, 0)


class _Window(RateLimitItemPerSecond):
    """``limit`` per ``window_s`` seconds, keyed without the amount: changing a limit
    (an admin override) keeps the window's history instead of starting a fresh one."""

    def key_for(self, *identifiers: bytes | str | int | float) -> str:
        parts = [i.decode() if isinstance(i, bytes) else str(i) for i in identifiers]
        return "/".join([self.namespace, *parts])


class _Backend:
    def __init__(self, client: Redis) -> None:
        pool = client.connection_pool
        prefix = f"{settings.CACHES['default'].get('KEY_PREFIX', 'sy')}:rl"
        self.storage = RedisStorage("redis://", connection_pool=pool, key_prefix=prefix)
        self.moving = MovingWindowRateLimiter(self.storage)
        self.sliding = SlidingWindowCounterRateLimiter(self.storage)
        self.adjust_script = client.register_script(_ADJUST_SLIDING)
        self.down_until = 0.0


_lock = threading.Lock()
_backends: dict[int, _Backend] = {}


def _backend() -> _Backend:
    client = get_redis_connection("default")
    backend = _backends.get(id(client))
    if backend is None:
        with _lock:
            backend = _backends.setdefault(id(client), _Backend(client))
    return backend


class Limiter:
    """One named limit family, e.g. ``Limiter("org-rpm", Strategy.MOVING)``; the
    identifier (an organization id, an API key id, an address) picks the counter."""

    def __init__(self, namespace: str, strategy: Strategy) -> None:
        self.namespace = namespace
        self.strategy = strategy

    def _item(self, limit: int, window_s: int) -> _Window:
        return _Window(limit, window_s, namespace=self.namespace)

    def _limiter(self, backend: _Backend) -> RateLimiter:
        return backend.moving if self.strategy is Strategy.MOVING else backend.sliding

    def hit(self, identifier: str, *, limit: int, window_s: int = 60, cost: int = 1) -> Decision:
        """Consume ``cost`` if it fits in ``limit`` per ``window_s``; ``limit <= 0`` is
        unlimited. A refusal consumes nothing."""
        return self._run(identifier, limit=limit, window_s=window_s, cost=cost, consume=True)

    def test(self, identifier: str, *, limit: int, window_s: int = 60, cost: int = 1) -> Decision:
        """Would ``cost`` fit? Consumes nothing."""
        return self._run(identifier, limit=limit, window_s=window_s, cost=cost, consume=False)

    def adjust(self, identifier: str, *, delta: int, window_s: int = 60) -> None:
        """Add ``delta`` (may be negative: a refund) to a sliding-window counter,
        unconditionally. Fails open like the checks."""
        if delta == 0:
            return
        if self.strategy is not Strategy.SLIDING:
            raise TypeError("only sliding-window-counter limits can be adjusted")
        backend = _backend()
        if time.monotonic() < backend.down_until:
            return
        key = self._item(1, window_s).key_for(identifier)
        storage = backend.storage
        keys = [storage.prefixed_key(storage._previous_window_key(key)), storage.prefixed_key(f"{{{key}}}")]
        try:
            backend.adjust_script(keys=keys, args=[window_s, delta])
        except RedisError as exc:
            self._unavailable(backend, exc)

    def _run(self, identifier: str, *, limit: int, window_s: int, cost: int, consume: bool) -> Decision:
        if limit <= 0 or cost <= 0:
            return Decision.allow()
        if cost > limit:
            return Decision(False, window_s)  # can never fit: the whole window
        backend = _backend()
        if time.monotonic() < backend.down_until:
            return Decision.allow()
        item = self._item(limit, window_s)
        limiter = self._limiter(backend)
        try:
            ok = limiter.hit(item, identifier, cost=cost) if consume else limiter.test(item, identifier, cost=cost)
            if ok:
                return Decision.allow()
            return Decision(False, self._retry_after(backend, item, identifier, cost))
        except RedisError as exc:
            self._unavailable(backend, exc)
            return Decision.allow()

    def _retry_after(self, backend: _Backend, item: _Window, identifier: str, cost: int) -> int:
        window_s = item.get_expiry()
        if self.strategy is Strategy.MOVING:  # the oldest hit in the window ages out
            wait = backend.moving.get_window_stats(item, identifier).reset_time - time.time()
        else:
            wait = _sliding_wait(backend, item, identifier, cost)
        return min(2 * window_s, max(1, math.ceil(wait)))

    def _unavailable(self, backend: _Backend, exc: RedisError) -> None:
        backend.down_until = time.monotonic() + REDIS_DOWN_SKIP_S
        # One line, no traceback: an outage is expected here and the cause is in the message.
        log.warning("ratelimit_unavailable", limit=self.namespace, error=type(exc).__name__, detail=str(exc)[:200])


def _sliding_wait(backend: _Backend, item: _Window, identifier: str, cost: int) -> float:
    """Seconds until ``cost`` fits under the weighted count ``prev * prev_ttl / window + cur``:
    the previous window's weight decays to zero, then the current one becomes previous."""
    window = item.get_expiry()
    prev, prev_ttl, cur, cur_ttl = backend.storage.get_sliding_window(item.key_for(identifier), window)
    room = item.amount - cost
    if cur <= room:
        return prev_ttl - (room - cur) * window / prev if prev else 0.0
    return max(0.0, cur_ttl - window) + window - room * window / cur


def most_restrictive(*decisions: Decision) -> Decision:
    """The refusal with the longest wait among ``decisions``, or an allow."""
    refused = [d for d in decisions if not d.allowed]
    return max(refused, key=lambda d: d.retry_after_s) if refused else Decision.allow()
