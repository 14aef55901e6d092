"""DRF throttle: requests per minute per API key and per organization, atomic in Redis
across every process (moving windows, ``users.limits``), 429 with ``Retry-After``.

Invalid keys are refused by address before their lookup (``ApiKeyAuthentication``);
the SSE view, which is not a DRF view, calls ``users.services.stream_authorize``. A Redis outage lets
requests through (and logs): it must not take the API down with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from contracts.users import Principal
from users import services

if TYPE_CHECKING:  # rest_framework.views imports this module through its settings
    from rest_framework.views import APIView


class ApiKeyRateThrottle(BaseThrottle):
    scope = "api_key"

    def __init__(self) -> None:
        self._wait: float | None = None

    def allow_request(self, request: Request, view: APIView) -> bool:
        principal = request.auth
        if not isinstance(principal, Principal):
            return True  # unauthenticated requests are refused before this matters
        decision = services.request_throttle(principal)
        if decision.allowed:
            return True
        self._wait = decision.retry_after_s
        return False

    def wait(self) -> float | None:
        return self._wait
