"""API keys: create, authenticate, revoke; 401 for missing, malformed and bad keys."""

from __future__ import annotations

import hashlib

import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from users import services
from users.models import APIKey

pytestmark = pytest.mark.django_db


def test_created_key_authenticates_and_is_stored_hashed(tenant) -> None:
    response = tenant.client.get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json()["organization_id"] == tenant.organization_id
    stored = APIKey.objects.get(id=tenant.api_key_id)
    assert tenant.issued.key not in (stored.key_hash, stored.prefix)
    assert stored.key_hash == hashlib.sha256(tenant.issued.key.encode()).hexdigest()
    assert tenant.issued.key.startswith(stored.prefix + "_")


def test_missing_key_is_401_with_error_shape(anon_client: APIClient) -> None:
    response = anon_client.get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json() == {
        "type": "client_error",
        "code": "not_authenticated",
        "detail": "Authentication credentials were not provided.",
    }
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Bearer sy_00000000_notarealkeyatall", "Bearer garbage", "Basic dXNlcjpwYXNz", "Bearer ", "Token sy_x_y"],
)
def test_bad_keys_are_401(anon_client: APIClient, tenant, header: str) -> None:
    anon_client.credentials(HTTP_AUTHORIZATION=header)
    response = anon_client.get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_right_prefix_wrong_secret_is_401(anon_client: APIClient, tenant) -> None:
    prefix = tenant.issued.info.prefix
    anon_client.credentials(HTTP_AUTHORIZATION=f"Bearer {prefix}_{'A' * 43}")
    assert anon_client.get("/api/v1/me/").status_code == 401


def test_revoked_key_is_401(tenant) -> None:
    services.api_key_revoke(prefix=tenant.issued.info.prefix)
    response = tenant.client.get("/api/v1/me/")
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid or revoked API key."


def test_last_used_is_recorded(tenant) -> None:
    assert APIKey.objects.get(id=tenant.api_key_id).last_used_at is None
    tenant.client.get("/api/v1/me/")
    assert APIKey.objects.get(id=tenant.api_key_id).last_used_at is not None


def test_create_api_key_command_prints_key_last_and_reuses_user_and_org(capsys) -> None:
    call_command("create_api_key", "Ada@Example.com", "--org", "Analytical Engines")
    first = capsys.readouterr().out.strip().splitlines()[-1]
    call_command("create_api_key", "ada@example.com")
    second = capsys.readouterr().out.strip().splitlines()[-1]
    principal_1 = services.api_key_authenticate(raw_key=first)
    principal_2 = services.api_key_authenticate(raw_key=second)
    assert principal_1.organization_id == principal_2.organization_id
    assert principal_1.organization_name == "Analytical Engines"
    assert principal_1.api_key_id != principal_2.api_key_id


def test_create_api_key_rejects_bad_email() -> None:
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="not a valid email"):
        call_command("create_api_key", "not-an-email")


def test_revoke_command(tenant, capsys) -> None:
    call_command("revoke_api_key", tenant.issued.info.prefix)
    assert "Revoked" in capsys.readouterr().out
    assert tenant.client.get("/api/v1/me/").status_code == 401
