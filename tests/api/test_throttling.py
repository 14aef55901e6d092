"""Per-key throttling in Redis: 429 with Retry-After once the window is used up."""

from __future__ import annotations

import pytest

from users.api.throttling import parse_rate
from users.models import APIKey

pytestmark = pytest.mark.django_db


def test_key_over_its_limit_gets_429_with_retry_after(make_tenant) -> None:
    busy, quiet = make_tenant(), make_tenant()
    APIKey.objects.filter(id=busy.api_key_id).update(rate_limit_per_minute=3)
    statuses = [busy.client.get("/api/v1/me/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = busy.client.get("/api/v1/me/")
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 61
    assert response.json()["code"] == "throttled"
    # The limit is per key: another organization's key is unaffected.
    assert quiet.client.get("/api/v1/me/").status_code == 200


def test_global_rate_applies_without_override(tenant, settings) -> None:
    settings.API_THROTTLE_RATE = "2/min"
    assert [tenant.client.get("/api/v1/me/").status_code for _ in range(3)] == [200, 200, 429]


@pytest.mark.parametrize("rate", ["abc", "10/fortnight", "0/min", "/min"])
def test_parse_rate_rejects_garbage(rate: str) -> None:
    with pytest.raises(ValueError, match="invalid rate"):
        parse_rate(rate)


def test_parse_rate() -> None:
    assert parse_rate("600/min") == (600, 60)
    assert parse_rate("5/s") == (5, 1)
