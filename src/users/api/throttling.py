"""Per-API-key rate limits in Redis: one atomic INCR per request in a fixed window.

If Redis is unreachable the throttle lets the request through (and logs): a cache
outage must not take the API down with it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import structlog
from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from contracts.users import Principal

if TYPE_CHECKING:  # rest_framework.views imports this module through its settings
    from rest_framework.views import APIView

log = structlog.get_logger(__name__)
PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def parse_rate(rate: str) -> tuple[int, int]:
    """``"600/min"`` → ``(600, 60)``."""
    count, _, period = rate.partition("/")
    if period not in PERIODS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"invalid rate {rate!r}; use e.g. 600/min")
    return int(count), PERIODS[period]


class ApiKeyRateThrottle(BaseThrottle):
    scope = "api_key"

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        principal = request.auth
        if not isinstance(principal, Principal):
            return True  # unauthenticated requests are refused before this matters
        limit, period = parse_rate(settings.API_THROTTLE_RATE)
        if principal.rate_limit_per_minute:
            limit, period = principal.rate_limit_per_minute, 60
        now = time.time()
        window = int(now // period)
        key = f"throttle:{self.scope}:{principal.api_key_id}:{period}:{window}"
        try:
            pipe = get_redis_connection("default").pipeline()
            pipe.incr(key)
            pipe.expire(key, period + 1)
            count = int(pipe.execute()[0])
        except RedisError:
            log.warning("throttle_unavailable", exc_info=True)
            return True
        if count > limit:
            self._wait = (window + 1) * period - now
            return False
        return True

    def wait(self) -> float | None:
        return self._wait
