"""Rate limits that hold across every process: the ``limits`` library on Redis.

Two strategies, each atomic in one Lua script on the Redis server:

- ``MOVING`` (requests): the library's moving window, one list entry per hit; exact —
  at no instant do the last ``window_s`` seconds hold more than ``limit`` hits.
- ``SLIDING`` (tokens): the library's sliding window counter, two counters per key, so
  a cost of 10,000 tokens is one ``INCRBY``, not 10,000 list entries. Approximate
  (it assumes the previous window's hits were spread evenly) but never the 2x burst
  a fixed window allows across its edge.

``hit_all`` checks several limits (e.g. an API key's and its organization's) in one
round trip: the same steps on the same keys as the library's two scripts, in one script
of ours, either consuming each limit until the first refusal or all-or-nothing.

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


# Several limits in one round trip: the library's acquire_moving_window.lua and
# acquire_sliding_window.lua steps, on the same keys, for each limit in order. ARGV: mode
# ("each": consume each limit until the first refusal; "all": consume all or none), the
# client's time (seconds, as the library sends it), then per limit its kind ("m" moving,
# one key; "s" sliding, two keys: previous, current), limit, window_s and cost. Returns
# the 1-based position of the first limit that refused, 0 when all allowed.
_HIT_ALL = """
local mode = ARGV[1]
local now = tonumber(ARGV[2])
local entries = {}
local k = 1
for i = 3, #ARGV, 4 do
    local e = {kind = ARGV[i], limit = tonumber(ARGV[i + 1]), window = tonumber(ARGV[i + 2]),
               amount = tonumber(ARGV[i + 3]), key = KEYS[k]}
    if e.kind == 's' then
        e.previous, e.current = KEYS[k], KEYS[k + 1]
        k = k + 2
    else
        k = k + 1
    end
    entries[#entries + 1] = e
end

local function fits(e)
    if e.amount > e.limit then
        return false
    end
    if e.kind == 'm' then
        local entry = redis.call('lindex', e.key, e.limit - e.amount)
        return not (entry and tonumber(entry) >= now - e.window)
    end
    local expiry = e.window * 1000
    local current_ttl = tonumber(redis.call('pttl', e.current))
    if current_ttl > 0 and current_ttl < expiry then
        redis.call('rename', e.current, e.previous)
        redis.call('set', e.current, 0, 'PX', current_ttl + expiry)
    end
    local previous_count = tonumber(redis.call('get', e.previous)) or 0
    local previous_ttl = tonumber(redis.call('pttl', e.previous)) or 0
    local current_count = tonumber(redis.call('get', e.current)) or 0
    if previous_ttl <= 0 then
        previous_ttl = 0
    end
    local weighted = math.floor(previous_count * previous_ttl / expiry) + current_count
    return weighted + e.amount <= e.limit
end

local function take(e)
    if e.kind == 'm' then
        local stamps = {}
        for i = 1, e.amount do
            stamps[i] = now
        end
        for i = 1, #stamps, 5000 do
            redis.call('lpush', e.key, unpack(stamps, i, math.min(i + 4999, #stamps)))
        end
        redis.call('ltrim', e.key, 0, e.limit - 1)
        redis.call('expire', e.key, e.window)
    elseif redis.call('exists', e.current) == 1 then
        redis.call('incrby', e.current, e.amount)
    else
        redis.call('set', e.current, e.amount, 'PX', e.window * 2000)
    end
end

for i, e in ipairs(entries) do
    if not fits(e) then
        return i
    end
    if mode == 'each' then
        take(e)
    end
end
if mode == 'all' then
    for _, e in ipairs(entries) do
        take(e)
    end
end
return 0
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
        self.hit_all_script = client.register_script(_HIT_ALL)
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


@dataclass(frozen=True, slots=True)
class Hit:
    """One limit of a ``hit_all``: what ``Limiter.hit`` takes."""

    limiter: Limiter
    identifier: str
    limit: int
    window_s: int = 60
    cost: int = 1


def hit_all(*hits: Hit, all_or_nothing: bool) -> Decision:
    """``Limiter.hit`` for several limits, in order, in one Redis round trip (one script,
    so atomic), instead of one round trip each. The first refusal stops the rest and is
    the answer; with ``all_or_nothing`` a refusal consumes nothing, otherwise the limits
    before it stay consumed (as calling ``hit`` on each in turn would). Limits ``<= 0``
    are unlimited and skipped; fails open like ``hit``."""
    active = [hit for hit in hits if hit.limit > 0 and hit.cost > 0]
    if not active:
        return Decision.allow()
    backend = _backend()
    if time.monotonic() < backend.down_until:
        return Decision.allow()
    storage = backend.storage
    keys: list[str] = []
    args: list[str | int | float] = ["all" if all_or_nothing else "each", time.time()]
    for hit in active:
        key = hit.limiter._item(hit.limit, hit.window_s).key_for(hit.identifier)
        if hit.limiter.strategy is Strategy.MOVING:
            keys.append(storage.prefixed_key(key))
            args += ["m", hit.limit, hit.window_s, hit.cost]
        else:
            keys += [storage.prefixed_key(storage._previous_window_key(key)), storage.prefixed_key(f"{{{key}}}")]
            args += ["s", hit.limit, hit.window_s, hit.cost]
    try:
        refused_at = int(backend.hit_all_script(keys=keys, args=args))
        if refused_at == 0:
            return Decision.allow()
        refused = active[refused_at - 1]
        if refused.cost > refused.limit:
            return Decision(False, refused.window_s)  # can never fit: the whole window
        item = refused.limiter._item(refused.limit, refused.window_s)
        return Decision(False, refused.limiter._retry_after(backend, item, refused.identifier, refused.cost))
    except RedisError as exc:
        active[0].limiter._unavailable(backend, exc)
        return Decision.allow()


def most_restrictive(*decisions: Decision) -> Decision:
    """The refusal with the longest wait among ``decisions``, or an allow."""
    refused = [d for d in decisions if not d.allowed]
    return max(refused, key=lambda d: d.retry_after_s) if refused else Decision.allow()
