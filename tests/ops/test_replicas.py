"""The replica router with a second real database: a copy of the test database made when
the test starts (CREATE DATABASE ... TEMPLATE), then changed on one side only, so what a
read returns says which database answered."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from django.db import connection, connections, router, transaction
from django.test import Client

from kernel import db
from llm import selectors
from llm.models import AITask
from tests.conftest import Tenant
from tests.ops.conftest import REPLICA_ALIAS

ALIAS = REPLICA_ALIAS  # in settings.DATABASES as a test mirror (tests/ops/conftest.py)
pytestmark = pytest.mark.django_db(transaction=True, databases=["default", ALIAS])


def _admin() -> psycopg.Connection:
    params = connection.settings_dict
    return psycopg.connect(
        dbname="postgres",
        host=params["HOST"] or None,
        port=params["PORT"] or None,
        user=params["USER"] or None,
        password=params["PASSWORD"] or None,
        autocommit=True,
    )


@pytest.fixture
def replica(tenant: Tenant, settings: object) -> Iterator[str]:
    """A second database with the primary's schema and rows, as the alias replica_0."""
    primary = connection.settings_dict["NAME"]
    name = f"{primary}_replica"
    connections.close_all()  # a template must have no other session
    with _admin() as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{primary}"')
    mirror = connections[ALIAS]
    mirrored = mirror.settings_dict  # the primary's own dict (a test mirror): replace, never mutate
    mirror.close()
    mirror.settings_dict = {**mirrored, "NAME": name}
    settings.DATABASE_REPLICAS = [ALIAS]  # type: ignore[attr-defined]
    db.reset_primary_pin()
    try:
        yield ALIAS
    finally:
        mirror.close()
        mirror.settings_dict = mirrored
        with _admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _task(tenant: Tenant, prompt: str, using: str = "default") -> AITask:
    return AITask.objects.using(using).create(
        organization_id=uuid.UUID(tenant.organization_id),
        prompt=prompt,
        result=prompt,  # what a list shows (it does not load the prompt)
        model="fake-small",
        max_tokens=16,
    )


def _listed(tenant: Tenant) -> set[str]:
    rows, _ = selectors.task_page(organization_id=uuid.UUID(tenant.organization_id), status=None, cursor=None, limit=50)
    return {str(row.result) for row in rows}


@pytest.fixture
def split(replica: str, tenant: Tenant) -> None:
    """One task only on the primary, one only on the replica."""
    _task(tenant, "on the primary")
    _task(tenant, "on the replica", using=replica)
    db.reset_primary_pin()  # the setup's writes pinned this context


def test_selector_reads_go_to_the_replica_other_reads_to_the_primary(split: None, tenant: Tenant) -> None:
    assert _listed(tenant) == {"on the replica"}
    assert {t.prompt for t in AITask.objects.all()} == {"on the primary"}  # not a selector under replica_reads


def test_writes_go_to_the_primary_and_pin_the_rest_of_the_context(split: None, tenant: Tenant) -> None:
    assert router.db_for_write(AITask) == "default"
    AITask.objects.filter(prompt="on the primary").update(metadata={"touched": True})
    assert db.primary_pinned()
    assert _listed(tenant) == {"on the primary"}  # read-your-writes
    assert AITask.objects.using(ALIAS).filter(metadata__touched=True).count() == 0
    db.reset_primary_pin()  # the next request or task
    assert _listed(tenant) == {"on the replica"}


def test_everything_inside_atomic_reads_the_primary(split: None, tenant: Tenant) -> None:
    with transaction.atomic():
        assert _listed(tenant) == {"on the primary"}
    assert _listed(tenant) == {"on the replica"}


def test_a_request_that_wrote_reads_its_writes_the_next_reads_the_replica(split: None, tenant: Tenant) -> None:
    client = Client(headers={"Authorization": tenant.client._credentials["HTTP_AUTHORIZATION"]})  # type: ignore[attr-defined]
    first = client.get("/api/v1/ai-tasks/")  # authenticating writes the key's last_used_at: pinned
    assert first.status_code == 200
    on_primary = str(AITask.objects.get(prompt="on the primary").id)
    on_replica = str(AITask.objects.using(ALIAS).get(prompt="on the replica").id)
    assert {t["id"] for t in first.json()["results"]} == {on_primary}
    second = client.get("/api/v1/ai-tasks/")  # writes nothing (last_used_at is fresh): the replica
    assert {t["id"] for t in second.json()["results"]} == {on_replica}
    created = client.post("/api/v1/ai-tasks/", {"prompt": "a new task"}, content_type="application/json")
    assert created.status_code == 202, created.json()
    task_id = created.json()["id"]
    assert AITask.objects.filter(id=task_id).exists()
    assert not AITask.objects.using(ALIAS).filter(id=task_id).exists()  # the write went to the primary
    detail = client.get(f"/api/v1/ai-tasks/{task_id}/")  # a single task is not a list: the primary
    assert detail.status_code == 200


def test_migrations_only_on_the_primary(replica: str) -> None:
    assert router.allow_migrate("default", "llm", model_name="aitask")
    assert not router.allow_migrate(replica, "llm", model_name="aitask")
    assert not router.allow_migrate(replica, "kernel")


def test_without_replicas_every_read_is_on_the_primary(tenant: Tenant, settings: object) -> None:
    settings.DATABASE_REPLICAS = []  # type: ignore[attr-defined]  # the production default
    _task(tenant, "only here")
    db.reset_primary_pin()
    assert _listed(tenant) == {"only here"}
    assert router.db_for_read(AITask) == "default"
