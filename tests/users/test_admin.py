"""The API key admin: staff can rename or revoke a key, never move it to another
organization (whoever holds the key would then read that organization's tasks)."""

from __future__ import annotations

import pytest
from django.test import Client

from users.models import APIKey, User

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("ops@switchyard.test", "pw"))
    return client


def test_a_key_cannot_be_moved_to_another_organization(staff_client, make_tenant) -> None:
    a, b = make_tenant(), make_tenant()
    key = APIKey.objects.get(id=a.issued.info.id)
    before = (key.organization_id, key.prefix, key.key_hash)
    url = f"/admin/users/apikey/{key.pk}/change/"
    page = staff_client.get(url)
    assert page.status_code == 200
    assert 'name="organization"' not in page.content.decode()  # shown, not editable
    response = staff_client.post(
        url,
        {
            "name": "renamed",
            "organization": str(b.issued.info.organization_id),
            "prefix": "sy_forged",
            "key_hash": "0" * 64,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    key.refresh_from_db()
    assert key.name == "renamed"
    assert (key.organization_id, key.prefix, key.key_hash) == before
    assert a.client.get("/api/v1/me/").json()["organization_id"] == str(a.issued.info.organization_id)


def test_the_key_list_and_revoke_action_still_work(staff_client, tenant) -> None:
    assert staff_client.get("/admin/users/apikey/").status_code == 200
    key_id = tenant.issued.info.id
    staff_client.post("/admin/users/apikey/", {"action": "revoke", "_selected_action": [str(key_id)]})
    assert APIKey.objects.get(id=key_id).revoked_at is not None
    assert tenant.client.get("/api/v1/me/").status_code == 401
