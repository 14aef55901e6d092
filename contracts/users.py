"""Identity contracts: organizations, the authenticated principal, API keys."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from contracts.base import Contract


class Organization(Contract):
    id: UUID
    name: str
    created_at: datetime


class Principal(Contract):
    """Who is calling: resolved from an API key on every request."""

    organization_id: UUID
    organization_name: str
    api_key_id: UUID
    user_id: int | None
    # Per-minute limit overrides (None: the settings' defaults; 0: unlimited).
    rate_limit_per_minute: int | None = None
    tokens_per_minute: int | None = None
    organization_requests_per_minute: int | None = None
    organization_tokens_per_minute: int | None = None


class ApiKeyInfo(Contract):
    id: UUID
    organization_id: UUID
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyIssued(Contract):
    """The only object that ever carries the plaintext key: shown once, never stored."""

    info: ApiKeyInfo
    key: str
    user_email: str
    organization_name: str
