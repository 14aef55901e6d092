"""Feature switches (kernel.flags on django-waffle): the default while nobody created the
switch, the admin's value once it exists (cached in Redis, invalidated on save), the
default again when the flag store cannot be read; and the real risky path behind one:
the response cache lookup of llm.services.submit."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from waffle.models import Switch as WaffleSwitch

from kernel.flags import DECLARED, Switch
from llm import services
from llm.services.submit import CACHE_LOOKUP
from tests.llm.test_execution import run, submit

pytestmark = pytest.mark.django_db
__all__ = ["run"]  # the fixture

PROBE = Switch("tests.probe", default=True)
STAMPS = {
    f"{field}_{part}": value for field in ("created", "modified") for part, value in enumerate(("2026-12-02", "12:00"))
}


def test_a_missing_switch_is_its_default_and_the_admin_value_wins_once_it_exists(
    django_capture_on_commit_callbacks: Any,
) -> None:
    assert PROBE.is_active() is True  # caches "missing" in Redis
    assert Switch("tests.probe_off", default=False).is_active() is False
    with django_capture_on_commit_callbacks(execute=True):  # waffle flushes its cache on commit
        row = WaffleSwitch.objects.create(name="tests.probe", active=False)
    assert PROBE.is_active() is False
    with django_capture_on_commit_callbacks(execute=True):
        row.active = True
        row.save()
    assert PROBE.is_active() is True


def test_an_unreadable_flag_store_gives_the_default(settings: Any) -> None:
    WaffleSwitch.objects.create(name="tests.probe", active=False)
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"},  # nothing listens
    }
    assert PROBE.is_active() is True


def test_switches_are_declared_and_editable_in_the_admin(django_capture_on_commit_callbacks: Any) -> None:
    assert DECLARED["llm.response_cache_lookup"] is CACHE_LOOKUP
    admin = get_user_model().objects.create_superuser(email="ops@example.test", password="pw-long-enough-1")
    client = Client()
    client.force_login(admin)
    assert CACHE_LOOKUP.is_active() is True
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/waffle/switch/add/",
            {"name": CACHE_LOOKUP.name, "note": "incident 42", **STAMPS},  # "active" unticked
            follow=True,
        )
    assert response.status_code == 200
    assert response.redirect_chain  # saved, back to the list
    assert WaffleSwitch.objects.get(name=CACHE_LOOKUP.name).active is False
    assert CACHE_LOOKUP.is_active() is False


def test_turning_the_cache_lookup_off_sends_identical_prompts_to_the_provider(
    make_tenant: Any, run: Any, django_capture_on_commit_callbacks: Any
) -> None:
    tenant = make_tenant()
    prompt = "What is a switchyard? #fake:tokens=100,200"
    first = submit(tenant, prompt=prompt)
    assert run(first).kind == "done"
    hit = tenant.client.post("/api/v1/ai-tasks/", {"prompt": prompt}, format="json").json()
    assert (hit["status"], hit["cached"]) == ("done", True)  # default: on

    with django_capture_on_commit_callbacks(execute=True):
        switch = WaffleSwitch.objects.create(name=CACHE_LOOKUP.name, active=False)
    missed = tenant.client.post("/api/v1/ai-tasks/", {"prompt": prompt}, format="json").json()
    assert (missed["status"], missed["cached"]) == ("pending", False)
    assert services.task_get(organization_id=uuid.UUID(tenant.organization_id), task_id=uuid.UUID(missed["id"]))

    with django_capture_on_commit_callbacks(execute=True):
        switch.active = True
        switch.save()
    again = tenant.client.post("/api/v1/ai-tasks/", {"prompt": prompt}, format="json").json()
    assert again["cached"] is True
