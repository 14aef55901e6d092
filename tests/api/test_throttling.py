"""Requests per minute per API key and per organization, and failed logins per address:
moving windows in Redis, 429 with Retry-After and the JSON error shape, fail-open."""

from __future__ import annotations

import secrets
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from rest_framework.test import APIClient

from users import services as users_services
from users.models import APIKey, Organization, User

pytestmark = pytest.mark.django_db


def assert_throttled(response) -> None:
    assert response.status_code == 429
    assert 1 <= int(response["Retry-After"]) <= 120
    body = response.json()
    assert body["type"] == "client_error"
    assert body["code"] == "throttled"
    assert body["retry_after"] == int(response["Retry-After"])


def test_key_over_its_override_gets_429_with_retry_after(make_tenant) -> None:
    busy, quiet = make_tenant(), make_tenant()
    APIKey.objects.filter(id=busy.api_key_id).update(rate_limit_per_minute=3)
    statuses = [busy.client.get("/api/v1/me/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert_throttled(busy.client.get("/api/v1/me/"))
    assert quiet.client.get("/api/v1/me/").status_code == 200  # per key: others unaffected


def test_default_key_limit_applies_without_override(tenant, settings) -> None:
    settings.KEY_REQUESTS_PER_MINUTE = 2
    assert [tenant.client.get("/api/v1/me/").status_code for _ in range(3)] == [200, 200, 429]


def test_zero_means_unlimited(tenant, settings) -> None:
    settings.KEY_REQUESTS_PER_MINUTE = 0
    settings.ORG_REQUESTS_PER_MINUTE = 0
    assert {tenant.client.get("/api/v1/me/").status_code for _ in range(30)} == {200}


def test_organization_limit_spans_all_its_keys(make_tenant, settings) -> None:
    settings.ORG_REQUESTS_PER_MINUTE = 3
    first = make_tenant(org="Shared org")
    second = make_tenant(org="Shared org", email="second@shared.test")
    other = make_tenant()
    assert first.organization_id == second.organization_id
    statuses = [client.get("/api/v1/me/").status_code for client in (first.client, second.client) * 2]
    assert statuses == [200, 200, 200, 429]
    assert_throttled(first.client.get("/api/v1/me/"))
    assert other.client.get("/api/v1/me/").status_code == 200


def test_organization_override_from_the_admin_field(make_tenant) -> None:
    tenant = make_tenant()
    Organization.objects.filter(id=tenant.organization_id).update(requests_per_minute=2)
    assert [tenant.client.get("/api/v1/me/").status_code for _ in range(3)] == [200, 200, 429]


def test_a_key_over_its_own_limit_does_not_use_up_its_organization(make_tenant, settings) -> None:
    settings.ORG_REQUESTS_PER_MINUTE = 4
    noisy = make_tenant(org="Quota org")
    calm = make_tenant(org="Quota org", email="calm@quota.test")
    APIKey.objects.filter(id=noisy.api_key_id).update(rate_limit_per_minute=1)
    assert [noisy.client.get("/api/v1/me/").status_code for _ in range(6)] == [200] + [429] * 5
    assert [calm.client.get("/api/v1/me/").status_code for _ in range(4)] == [200, 200, 200, 429]


def test_the_key_and_organization_limits_cost_one_redis_round_trip(tenant, settings, monkeypatch) -> None:
    """Both request windows (and, at submit, both token windows) are one script each."""
    settings.KEY_REQUESTS_PER_MINUTE, settings.ORG_REQUESTS_PER_MINUTE = 100, 100
    settings.KEY_TOKENS_PER_MINUTE, settings.ORG_TOKENS_PER_MINUTE = 100_000, 100_000
    from redis import Redis

    from users import limits

    principal = users_services.api_key_authenticate(raw_key=tenant.issued.key)
    limits.request_throttle(principal)  # loads the scripts
    limits.token_usage_reserve(organization_id=principal.organization_id, api_key_id=principal.api_key_id, tokens=10)
    scripts: list[str] = []
    original = Redis.execute_command

    def counting(self: Redis, *args: object, **options: object) -> object:
        if str(args[0]).upper() in ("EVAL", "EVALSHA"):
            scripts.append(str(args[0]))
        return original(self, *args, **options)

    monkeypatch.setattr(Redis, "execute_command", counting)
    assert limits.request_throttle(principal).allowed
    assert scripts == ["EVALSHA"]
    limits.token_usage_reserve(organization_id=principal.organization_id, api_key_id=principal.api_key_id, tokens=10)
    assert scripts == ["EVALSHA", "EVALSHA"]


def _sleep_until_fraction(fraction: float) -> None:
    """Sleep until the wall clock's sub-second part is ``fraction`` (the next time it is)."""
    now = time.time()
    target = int(now) + fraction
    if target <= now:
        target += 1
    time.sleep(target - now)


def test_no_burst_across_a_window_edge(tenant, settings) -> None:
    """A fixed window (``INCR`` per clock-aligned window) let 2x through around its edge:
    3 requests just before a second boundary and 3 just after all passed a 3-per-second
    limit. A moving window counts the last second wherever it falls."""
    settings.RATE_LIMIT_WINDOW_S = 1
    settings.KEY_REQUESTS_PER_MINUTE = 3  # per window
    settings.API_THROTTLE_RATE = "3/s"  # what the fixed-window throttle read
    _sleep_until_fraction(0.75)
    before = [tenant.client.get("/api/v1/me/").status_code for _ in range(3)]
    _sleep_until_fraction(0.05)
    after = [tenant.client.get("/api/v1/me/").status_code for _ in range(3)]
    assert before == [200, 200, 200]
    assert after == [429, 429, 429]
    time.sleep(1.1)  # and the window moves on
    assert tenant.client.get("/api/v1/me/").status_code == 200


def test_retry_after_says_when_a_slot_frees(tenant, settings) -> None:
    settings.KEY_REQUESTS_PER_MINUTE = 1
    assert tenant.client.get("/api/v1/me/").status_code == 200
    response = tenant.client.get("/api/v1/me/")
    assert_throttled(response)
    assert 59 <= int(response["Retry-After"]) <= 60


def random_key() -> str:
    return f"sy_{secrets.token_hex(4)}_{secrets.token_urlsafe(32)}"


def test_invalid_keys_are_throttled_by_address_before_the_lookup(tenant, settings, django_assert_num_queries) -> None:
    settings.AUTH_FAILURES_PER_MINUTE = 5
    attacker = APIClient(REMOTE_ADDR="203.0.113.7")
    statuses = []
    for _ in range(5):
        attacker.credentials(HTTP_AUTHORIZATION=f"Bearer {random_key()}")
        statuses.append(attacker.get("/api/v1/me/").status_code)
    assert statuses == [401] * 5
    attacker.credentials(HTTP_AUTHORIZATION=f"Bearer {random_key()}")
    with django_assert_num_queries(0):  # refused before the key lookup
        response = attacker.get("/api/v1/me/")
    assert_throttled(response)
    # Another address is unaffected, and so is a valid key elsewhere.
    elsewhere = APIClient(REMOTE_ADDR="198.51.100.9")
    elsewhere.credentials(HTTP_AUTHORIZATION=f"Bearer {random_key()}")
    assert elsewhere.get("/api/v1/me/").status_code == 401
    assert tenant.client.get("/api/v1/me/").status_code == 200


def test_valid_requests_do_not_count_as_failures(tenant, settings) -> None:
    settings.AUTH_FAILURES_PER_MINUTE = 2
    assert {tenant.client.get("/api/v1/me/").status_code for _ in range(10)} == {200}


def test_address_behind_trusted_proxies(settings) -> None:
    settings.AUTH_FAILURES_PER_MINUTE = 1
    settings.API_TRUSTED_PROXIES = 1
    client = APIClient(REMOTE_ADDR="10.0.0.2")  # the proxy
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {random_key()}")
    assert client.get("/api/v1/me/", HTTP_X_FORWARDED_FOR="spoofed, 203.0.113.1").status_code == 401
    assert client.get("/api/v1/me/", HTTP_X_FORWARDED_FOR="203.0.113.1").status_code == 429
    assert client.get("/api/v1/me/", HTTP_X_FORWARDED_FOR="203.0.113.2").status_code == 401


def sse_get(url: str, key: str, remote_addr: str = "127.0.0.1"):
    """The events route through the ASGI request path (the `stream` role): under WSGI it
    answers 421 before anything else."""
    client = AsyncClient(REMOTE_ADDR=remote_addr)
    return async_to_sync(client.get)(url, headers={"Authorization": f"Bearer {key}"})


@pytest.mark.django_db(transaction=True)  # the view looks the key up on another thread
def test_sse_route_is_throttled_per_key(tenant, settings) -> None:
    settings.KEY_REQUESTS_PER_MINUTE = 2
    task_id = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "Stream me later"}, format="json").json()["id"]
    assert tenant.client.get("/api/v1/me/").status_code == 200
    assert_throttled(sse_get(f"/api/v1/ai-tasks/{task_id}/events/", tenant.issued.key))


@pytest.mark.django_db(transaction=True)
def test_sse_route_throttles_invalid_keys_by_address(settings) -> None:
    settings.AUTH_FAILURES_PER_MINUTE = 3
    url = f"/api/v1/ai-tasks/{uuid.uuid4()}/events/"
    statuses = [sse_get(url, random_key(), "203.0.113.8").status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 429]
    assert_throttled(sse_get(url, random_key(), "203.0.113.8"))


@pytest.fixture
def redis_down(settings) -> None:
    """The cache (and so the limits) pointed at a port where nothing listens."""
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        }
    }


def test_requests_pass_when_redis_is_down(tenant, settings, redis_down) -> None:
    settings.KEY_REQUESTS_PER_MINUTE = 1
    settings.AUTH_FAILURES_PER_MINUTE = 1
    assert [tenant.client.get("/api/v1/me/").status_code for _ in range(3)] == [200, 200, 200]
    anon = APIClient()
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {random_key()}")
    assert [anon.get("/api/v1/me/").status_code for _ in range(3)] == [401, 401, 401]


def test_organization_override_is_set_in_the_admin(make_tenant) -> None:
    tenant = make_tenant()
    staff = Client()
    staff.force_login(User.objects.create_superuser("ops@limits.test", "pw"))
    url = f"/admin/users/organization/{tenant.organization_id}/change/"
    page = staff.get(url)
    assert b'name="requests_per_minute"' in page.content and b'name="tokens_per_minute"' in page.content
    organization = Organization.objects.get(id=tenant.organization_id)
    inline = organization.memberships.get()
    form = {
        "name": organization.name,
        "requests_per_minute": "1",
        "tokens_per_minute": "",
        "memberships-TOTAL_FORMS": "1",
        "memberships-INITIAL_FORMS": "1",
        "memberships-MIN_NUM_FORMS": "0",
        "memberships-MAX_NUM_FORMS": "1000",
        "memberships-0-id": str(inline.id),
        "memberships-0-organization": str(tenant.organization_id),
        "memberships-0-user": str(inline.user_id),
        "memberships-0-role": inline.role,
    }
    assert staff.post(url, form).status_code == 302
    assert Organization.objects.get(id=tenant.organization_id).requests_per_minute == 1
    assert [tenant.client.get("/api/v1/me/").status_code for _ in range(2)] == [200, 429]
