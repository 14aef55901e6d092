"""Fixtures shared by every test: real PostgreSQL (pytest-django) and real Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.conf import settings
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from billing import services as billing
from contracts.users import ApiKeyIssued
from users import services as user_services


@pytest.fixture(autouse=True)
def _clean_redis() -> None:
    """Each test starts with an empty Redis database (its own, see settings_test)."""
    get_redis_connection("default").flushdb()


@dataclass(frozen=True)
class Tenant:
    """An organization with an API key and an authenticated client."""

    issued: ApiKeyIssued
    client: APIClient

    @property
    def organization_id(self) -> str:
        return str(self.issued.info.organization_id)

    @property
    def api_key_id(self) -> str:
        return str(self.issued.info.id)


@pytest.fixture(autouse=True)
def _restore_catalog_after_flush(request: pytest.FixtureRequest, django_db_blocker: Any) -> Iterator[None]:
    """``transactional_db`` truncates every table when its test ends, the price catalog
    seeded by a data migration too, and ``--reuse-db`` would keep it empty for the next
    session. Set up first, torn down last (after the flush): put the catalog back."""
    yield
    if "transactional_db" in request.fixturenames:
        with django_db_blocker.unblock():
            billing.price_catalog_seed()


@pytest.fixture
def make_tenant(request: pytest.FixtureRequest) -> Callable[..., Tenant]:
    request.getfixturevalue("transactional_db" if "transactional_db" in request.fixturenames else "db")
    billing.price_catalog_seed()
    counter = iter(range(1_000_000))

    def make(org: str | None = None, email: str | None = None) -> Tenant:
        n = next(counter)
        issued = user_services.api_key_create(
            email=email or f"user{n}@tenant{n}.test", organization_name=org or f"Tenant {n}"
        )
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.key}")
        return Tenant(issued=issued, client=client)

    return make


@pytest.fixture
def tenant(make_tenant: Callable[..., Tenant]) -> Tenant:
    return make_tenant()


class Broker:
    """The messages waiting in this session's broker (Redis lists named after queues).
    Only for tests without running workers: it empties the queues it is asked about."""

    def __init__(self) -> None:
        import redis

        self.client = redis.Redis.from_url(settings.CELERY_BROKER_URL)

    def clear(self, *queues: str) -> None:
        self.client.delete(*queues)

    def task_ids(self, queue: str) -> list[str]:
        import json

        messages = [json.loads(raw) for raw in self.client.lrange(queue, 0, -1)]
        return [message["headers"]["id"] for message in reversed(messages)]  # LPUSH: oldest last

    def calls(self, queue: str) -> list[tuple[str, list[Any]]]:
        """(task name, positional arguments) of each message waiting on ``queue``, oldest first."""
        import base64
        import json

        calls = []
        for raw in reversed(self.client.lrange(queue, 0, -1)):
            message = json.loads(raw)
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            calls.append((message["headers"]["task"], args))
        return calls


@pytest.fixture
def broker() -> Broker:
    broker = Broker()
    broker.clear("priority", "default", "low")
    return broker


@pytest.fixture
def anon_client() -> APIClient:
    return APIClient()


__all__ = ["Broker", "Tenant", "settings"]
