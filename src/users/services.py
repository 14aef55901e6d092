"""Public surface of the users context: organizations, API keys, authentication.

Takes and returns ``contracts.users`` models; no ORM object leaves this module.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from contextlib import suppress
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from contracts.users import ApiKeyInfo, ApiKeyIssued, Organization, Principal
from kernel import context
from kernel.errors import DomainError, NotFoundError
from users import emails, limits
from users.limits import RateLimited as RateLimited  # re-exported: the public surface of the limits
from users.limits import TokensRateLimited as TokensRateLimited
from users.limits import auth_failure_check as auth_failure_check
from users.limits import auth_failure_record as auth_failure_record
from users.limits import client_address as client_address
from users.limits import request_throttle as request_throttle
from users.limits import token_usage_correct as token_usage_correct
from users.limits import token_usage_reserve as token_usage_reserve
from users.models import APIKey, Membership, User
from users.models import Organization as OrganizationModel

KEY_PREFIX = "sy_"
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Unauthenticated(DomainError):
    """A 401 of the API key scheme (the response names the scheme in ``WWW-Authenticate``)."""

    status_code = 401
    code = "authentication_failed"
    headers = {"WWW-Authenticate": 'Bearer realm="api"'}


class NotAuthenticated(Unauthenticated):
    code = "not_authenticated"
    default_detail = "Authentication credentials were not provided."


class MalformedAuthorization(Unauthenticated):
    default_detail = "Use 'Authorization: Bearer <api key>'."


class InvalidApiKey(Unauthenticated):
    default_detail = "Invalid or revoked API key."


# -- mappers --------------------------------------------------------------------------


def _to_organization(org: OrganizationModel) -> Organization:
    return Organization(id=org.id, name=org.name, created_at=org.created_at)


def _to_key_info(key: APIKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=key.id,
        organization_id=key.organization_id,
        name=key.name,
        prefix=key.prefix,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )


def _digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


# -- organizations --------------------------------------------------------------------


def organization_get_or_create(*, name: str) -> Organization:
    name = name.strip()
    if not name:
        raise DomainError("Organization name must not be empty.")
    org = OrganizationModel.objects.filter(name__iexact=name).first()
    if org is None:
        try:
            with transaction.atomic():
                org = OrganizationModel.objects.create(name=name)
        except IntegrityError:  # created concurrently: the unique constraint decided
            org = OrganizationModel.objects.get(name__iexact=name)
    return _to_organization(org)


def organization_get(*, organization_id: UUID) -> Organization:
    org = OrganizationModel.objects.filter(id=organization_id).first()
    if org is None:
        raise NotFoundError("Organization not found.")
    return _to_organization(org)


def organization_find(*, name_or_id: str) -> Organization:
    """Look an organization up by id or (case-insensitive) name, for management commands."""
    org = None
    with suppress(ValueError):
        org = OrganizationModel.objects.filter(id=UUID(name_or_id)).first()
    org = org or OrganizationModel.objects.filter(name__iexact=name_or_id.strip()).first()
    if org is None:
        raise NotFoundError(f"No organization named {name_or_id!r}.")
    return _to_organization(org)


def organization_list() -> list[Organization]:
    return [_to_organization(org) for org in OrganizationModel.objects.order_by("name")]


def organization_list_for_member(*, user_id: int) -> list[Organization]:
    """The organizations ``user_id`` is a member of (any role), by name."""
    return [
        _to_organization(org) for org in OrganizationModel.objects.filter(memberships__user_id=user_id).order_by("name")
    ]


# -- API keys -------------------------------------------------------------------------


@transaction.atomic
def api_key_create(*, email: str, organization_name: str | None = None, name: str = "default") -> ApiKeyIssued:
    """Create a key for ``email`` in the organization, creating both when missing.

    Without an organization name the user's first organization is used, or a new one
    named after the email's domain.
    """
    email = User.objects.normalize_email(email.strip()).lower()
    existing = User.objects.filter(email=email).first()
    user = existing or User.objects.create_user(email)
    if organization_name is None:
        membership = user.memberships.select_related("organization").order_by("created_at").first()
        organization_name = membership.organization.name if membership else email.rsplit("@", 1)[-1]
    org_contract = organization_get_or_create(name=organization_name)
    Membership.objects.get_or_create(
        user=user, organization_id=org_contract.id, defaults={"role": Membership.Role.OWNER}
    )
    public = secrets.token_hex(4)
    raw_key = f"{KEY_PREFIX}{public}_{secrets.token_urlsafe(32)}"
    key = APIKey.objects.create(
        organization_id=org_contract.id,
        created_by=user,
        name=name,
        prefix=f"{KEY_PREFIX}{public}",
        key_hash=_digest(raw_key),
    )
    # Sent by a priority worker after commit (users.emails); ids only, never the key.
    if existing is None:
        emails.send_welcome_email.enqueue(user.pk, org_contract.name)
    emails.send_key_created_email.enqueue(str(key.id))
    return ApiKeyIssued(info=_to_key_info(key), key=raw_key, user_email=email, organization_name=org_contract.name)


# Every API request runs this lookup: written out in SQL, since building and compiling the
# same select_related queryset cost more CPU than PostgreSQL took to answer it (issue 9).
_KEY_LOOKUP = (
    "SELECT k.id, k.organization_id, k.created_by_id, k.key_hash, k.revoked_at, k.last_used_at, "  # noqa: S608
    "k.rate_limit_per_minute, k.tokens_per_minute, o.name, o.requests_per_minute, o.tokens_per_minute "
    f"FROM {APIKey._meta.db_table} AS k JOIN {OrganizationModel._meta.db_table} AS o ON o.id = k.organization_id "
    "WHERE k.prefix = %s"
)


def api_key_authenticate(*, raw_key: str) -> Principal:
    """Resolve a presented key to its principal, or raise ``InvalidApiKey``.

    One indexed query; the stored digest is compared in constant time. ``last_used_at``
    is written at most once a minute per key, so a busy key does not write on every call.
    """
    parts = raw_key.split("_")
    if len(parts) < 3 or not raw_key.startswith(KEY_PREFIX):
        raise InvalidApiKey()
    prefix = f"{KEY_PREFIX}{parts[1]}"
    with connection.cursor() as cursor:
        cursor.execute(_KEY_LOOKUP, [prefix])
        row = cursor.fetchone()
    if row is None:
        raise InvalidApiKey()
    key_id, org_id, user_id, key_hash, revoked_at, last_used_at, key_rpm, key_tpm, org_name, org_rpm, org_tpm = row
    if not hmac.compare_digest(key_hash, _digest(raw_key)) or revoked_at is not None:
        raise InvalidApiKey()
    now = timezone.now()
    if last_used_at is None or now - last_used_at > LAST_USED_RESOLUTION:
        APIKey.objects.filter(pk=key_id).exclude(last_used_at__gt=now - LAST_USED_RESOLUTION).update(last_used_at=Now())
    principal = Principal(
        organization_id=org_id,
        organization_name=org_name,
        api_key_id=key_id,
        user_id=user_id,
        rate_limit_per_minute=key_rpm,
        tokens_per_minute=key_tpm,
        organization_requests_per_minute=org_rpm,
        organization_tokens_per_minute=org_tpm,
    )
    limits.remember(principal)
    return principal


def bearer_authenticate(*, authorization: str, meta: Mapping[str, Any]) -> Principal:
    """The one authentication path of the API: DRF's ``ApiKeyAuthentication`` and the SSE
    view both call it with the ``Authorization`` header and the request's META.

    Raises ``NotAuthenticated`` (no header), ``MalformedAuthorization`` (not ``Bearer
    <key>``), ``RateLimited`` (too many failed attempts from the address: refused before
    the lookup, so guessing costs nothing but time) or ``InvalidApiKey`` (counted as a
    failed attempt). Binds the organization, key and user to the request's log context."""
    if not authorization.strip():
        raise NotAuthenticated()
    scheme, _, raw_key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw_key.strip():
        raise MalformedAuthorization()
    address = limits.client_address(meta)
    refused = limits.auth_failure_check(address)
    if not refused.allowed:
        raise RateLimited("Too many failed authentications from this address.", retry_after=refused.retry_after_s)
    try:
        principal = api_key_authenticate(raw_key=raw_key.strip())
    except InvalidApiKey:
        limits.auth_failure_record(address)
        raise
    context.bind(
        organization_id=str(principal.organization_id),
        api_key_id=str(principal.api_key_id),
        user_id=principal.user_id,
    )
    return principal


def stream_authorize(*, authorization: str, meta: Mapping[str, Any]) -> Principal:
    """For the SSE view (not a DRF view, so no DRF throttle class): ``bearer_authenticate``,
    then the key's and the organization's request limits. Synchronous, leaving the database
    connection to the caller: the view runs it in the one worker thread that also reads the
    task, and closes the connection there, so an open stream holds none."""
    principal = bearer_authenticate(authorization=authorization, meta=meta)
    decision = limits.request_throttle(principal)
    if not decision.allowed:
        raise RateLimited(retry_after=decision.retry_after_s)
    return principal


def api_key_revoke(*, prefix: str, organization_id: UUID | None = None) -> ApiKeyInfo:
    keys = APIKey.objects.filter(prefix=prefix)
    if organization_id is not None:
        keys = keys.filter(organization_id=organization_id)
    keys.filter(revoked_at__isnull=True).update(revoked_at=Now())
    key = keys.first()
    if key is None:
        raise NotFoundError(f"No API key with prefix {prefix!r}.")
    return _to_key_info(key)


def api_key_list(*, organization_id: UUID) -> list[ApiKeyInfo]:
    return [_to_key_info(k) for k in APIKey.objects.filter(organization_id=organization_id).order_by("-created_at")]
