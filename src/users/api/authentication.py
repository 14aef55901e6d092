"""``Authorization: Bearer <api key>`` for DRF: ``users.services.bearer_authenticate``, the
API's one authentication path (the SSE view calls it too). ``request.auth`` is the ``Principal``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from contracts.users import Principal
from users import services


@dataclass(frozen=True, slots=True)
class ApiCaller:
    """What DRF sees as ``request.user`` for an API-key request."""

    principal: Principal
    is_authenticated: bool = True
    is_anonymous: bool = False

    @property
    def pk(self) -> int | None:
        return self.principal.user_id


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiCaller, Principal] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None  # DRF answers 401 not_authenticated (or lets a public view through)
        try:
            principal = services.bearer_authenticate(authorization=header, meta=request.META)
        except services.RateLimited as exc:
            raise exceptions.Throttled(wait=exc.retry_after) from exc
        except services.Unauthenticated as exc:
            raise exceptions.AuthenticationFailed(exc.detail) from exc
        return ApiCaller(principal), principal

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Documents ``ApiKeyAuthentication`` in the OpenAPI schema (without it drf-spectacular
    warns on every view, which fails ``spectacular --fail-on-warn``, the drift check)."""

    target_class = ApiKeyAuthentication
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "Switchyard API key"}
