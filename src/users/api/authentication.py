"""``Authorization: Bearer <api key>`` for DRF. ``request.auth`` is the ``Principal``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from contracts.users import Principal
from kernel import context
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
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not raw_key.strip():
            raise exceptions.AuthenticationFailed("Use 'Authorization: Bearer <api key>'.")
        address = services.client_address(request.META)
        refused = services.auth_failure_check(address)  # before the lookup: brute force gets 429
        if not refused.allowed:
            raise exceptions.Throttled(wait=refused.retry_after_s)
        try:
            principal = services.api_key_authenticate(raw_key=raw_key.strip())
        except services.InvalidApiKey as exc:
            services.auth_failure_record(address)
            raise exceptions.AuthenticationFailed(exc.detail) from exc
        context.bind(
            organization_id=str(principal.organization_id),
            api_key_id=str(principal.api_key_id),
            user_id=principal.user_id,
        )
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
