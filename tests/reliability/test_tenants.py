"""Hostile tenants: every route of the URLconf, every HTTP method, against another
organization's data (SPEC §4: "another organization's id answers 404").

The routes come from ``django.urls.get_resolver()``, not from a hand-kept list, and each
must have an entry in ``COVERAGE`` saying how it is checked: a new route without one fails
``test_every_route_has_a_coverage_entry``. Organization A owns tasks in every state and a
ledger row; organization B uses its own valid key against them. Runs in-process: Django's
test clients, the ASGI one for the async SSE view (the stream role serves it), the WSGI
one for the rest. A's rows are committed once for the module (the SSE view reads them on
a connection of its own) and flushed at the end.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from asgiref.sync import async_to_sync, iscoroutinefunction
from django.core.management import call_command
from django.test import AsyncClient, Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.test import APIClient

from billing import services as billing
from llm import services as llm
from llm.models import AITask
from tests.conftest import Tenant
from users import services as users
from users.models import User

pytestmark = pytest.mark.django_db
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
PUBLIC = "public"  # answers without a key and serves no tenant's data (probes, metrics, schema)
OWN = "own"  # the caller's own organization, no id in the path (me, budget, usage, task list)
OBJECT = "object"  # one object by id in the path: another organization's id is a 404
ADMIN = "admin"  # the Django admin: staff sessions only, an API key is not enough
SESSION = "session"  # pages for signed-in people (the dashboard): no API key gets in (tests/analytics)

COVERAGE: dict[str, str] = {
    "healthz": PUBLIC,
    "readyz": PUBLIC,
    "metrics": PUBLIC,
    "api/schema/": PUBLIC,
    "api/docs/": PUBLIC,
    "api/v1/me/": OWN,
    "api/v1/billing/budget/": OWN,
    "api/v1/billing/usage/": OWN,
    "api/v1/ai-tasks/": OWN,
    "api/v1/ai-tasks/<uuid:task_id>/": OBJECT,
    "api/v1/ai-tasks/<uuid:task_id>/cancel/": OBJECT,
    "api/v1/ai-tasks/<uuid:task_id>/events/": OBJECT,
    "api/v1/analytics/summary/": OWN,
    "api/v1/analytics/exports/": OWN,
    "api/v1/analytics/exports/<uuid:export_id>/": OBJECT,
    "api/v1/analytics/exports/<uuid:export_id>/download/": OBJECT,
    "api/v1/assistants/": OWN,
    "api/v1/assistants/<uuid:assistant_id>/": OBJECT,
    "api/v1/assistants/<uuid:assistant_id>/conversations/": OBJECT,
    "api/v1/conversations/": OWN,
    "api/v1/conversations/<uuid:conversation_id>/": OBJECT,
    "api/v1/conversations/<uuid:conversation_id>/messages/": OBJECT,
    "dashboard/": SESSION,
    "dashboard/login/": SESSION,
    "dashboard/logout/": SESSION,
}
ADMIN_PREFIX = "admin/"  # every route the admin site registers, whatever its models

# Query strings that make an OWN route answer with data rather than a 400.
_TODAY = datetime.now(UTC).date()
USAGE_RANGE = f"start={_TODAY - timedelta(days=1)}&end={_TODAY + timedelta(days=1)}"
QUERIES = {"api/v1/billing/usage/": f"?{USAGE_RANGE}", "api/v1/analytics/summary/": f"?{USAGE_RANGE}"}


def routes() -> list[str]:
    """Every URL pattern of the URLconf as its full route string."""
    found: list[str] = []

    def walk(resolver: URLResolver, prefix: str) -> None:
        for pattern in resolver.url_patterns:
            if isinstance(pattern, URLResolver):
                walk(pattern, prefix + str(pattern.pattern))
            else:
                assert isinstance(pattern, URLPattern)
                found.append(prefix + str(pattern.pattern))

    walk(get_resolver(), "")
    return found


def kind_of(route: str) -> str | None:
    return ADMIN if route.startswith(ADMIN_PREFIX) else COVERAGE.get(route)


def fill(route: str, **ids: str) -> str:
    """A concrete path for ``route``: path converters take ``ids`` by name (KeyError for an
    id the test does not know: add the object to the ``world`` fixture), regex groups
    take their first alternative, a catch-all takes a page that does not exist."""
    path = route.replace("(?P<url>.*)$", "no-such-page/")
    path = re.sub(r"\(\?P<\w+>([^|)]+)[^)]*\)", r"\1", path)
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: ids[m.group(1)], path)
    return "/" + path.replace("^", "").replace("$", "")


def test_every_route_has_a_coverage_entry() -> None:
    found = routes()
    missing = [route for route in found if kind_of(route) is None]
    assert not missing, f"routes without an entry in COVERAGE (say how tenants are kept apart): {missing}"
    stale = sorted(set(COVERAGE) - set(found))
    assert not stale, f"COVERAGE names routes that no longer exist: {stale}"
    assert any(route.startswith(ADMIN_PREFIX) for route in found)


# -- two organizations -------------------------------------------------------------------


@dataclass
class World:
    a: Tenant
    b: Tenant
    a_tasks: dict[str, str]  # state -> task id
    b_task: str
    revoked_key: str  # a key of organization A, revoked
    a_objects: dict[str, str]  # path parameter -> one of A's other objects (assistant, ...)

    def ids(self, state: str) -> dict[str, str]:
        """A's ids for every path parameter, with the task in ``state``."""
        return {"task_id": self.a_tasks[state], **self.a_objects}

    def secrets_of_a(self) -> list[str]:
        """Strings only organization A's rows contain."""
        info = self.a.issued.info
        return [
            self.a.organization_id,
            str(info.id),
            info.prefix,
            self.a.issued.organization_name,
            self.a.issued.user_email,
            "ORG-A-ONLY",
            *self.a_tasks.values(),
            *self.a_objects.values(),
        ]


def key_client(key: str) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {key}")


def _is_async_view(path: str) -> bool:
    return iscoroutinefunction(resolve(urlsplit(path).path).func)


def call(client: Client, method: str, path: str) -> Any:
    """``method`` on ``path`` with ``client``'s credentials. An async view (SSE) is reached
    through Django's ASGI handler, as the stream role serves it; the rest through the
    WSGI one, as the web role does."""
    # One body for every writing route: a task's prompt, a turn's content.
    text = "Organization B asks something."
    body = json.dumps({"prompt": text, "content": text, "metadata": {"who": "b"}})
    kwargs: dict[str, Any] = {"content_type": "application/json"} if method in ("POST", "PUT", "PATCH") else {}
    data = body if kwargs else ""
    if _is_async_view(path):
        authorization = client.defaults.get("HTTP_AUTHORIZATION")
        asgi = AsyncClient()
        asgi.cookies = client.cookies
        # Per request: AsyncClient(headers=...) lands in the scope, not in its headers.
        headers = {"Authorization": authorization} if authorization else None

        async def send() -> Any:
            return await asgi.generic(method, path, data, headers=headers, **kwargs)

        return async_to_sync(send)()
    return client.generic(method, path, data, **kwargs)


def content(response: Any) -> bytes:
    if not response.streaming:
        return bytes(response.content)
    if response.is_async:

        async def read() -> bytes:
            return b"".join([chunk async for chunk in response.streaming_content])

        return async_to_sync(read)()
    return b"".join(response.streaming_content)


def _tenant(org: str, email: str) -> Tenant:
    issued = users.api_key_create(email=email, organization_name=org)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {issued.key}")
    return Tenant(issued=issued, client=client)


@pytest.fixture(scope="module")
def world(django_db_setup: None, django_db_blocker: Any) -> Iterator[World]:
    """Built once for the module and committed (the SSE view reads in another thread, on
    its own connection), then flushed the way ``transactional_db`` flushes. Each test runs
    in a transaction on top of it, so what B creates in a test is rolled back."""
    with django_db_blocker.unblock():
        billing.price_catalog_seed()
        a, b = _tenant("Org A", "owner@org-a.test"), _tenant("Org B", "owner@org-b.test")

        def submit(tenant: Tenant, prompt: str) -> str:
            body = {"prompt": prompt, "metadata": {"marker": "ORG-A-ONLY" if tenant is a else "b"}}
            response = tenant.client.post("/api/v1/ai-tasks/", body, format="json")
            assert response.status_code == 202, response.content
            return str(response.json()["id"])

        tasks = {state: submit(a, f"Organization A, task {state}") for state in ("pending", "done", "cancelled")}
        assert llm.task_execute(task_id=uuid.UUID(tasks["done"])).kind == "done"  # a ledger row for A
        assert a.client.post(f"/api/v1/ai-tasks/{tasks['cancelled']}/cancel/").status_code == 200
        second = users.api_key_create(email=a.issued.user_email, organization_name=a.issued.organization_name)
        assert str(second.info.organization_id) == a.organization_id
        users.api_key_revoke(prefix=second.info.prefix)
        b_task = submit(b, "Organization B, its own task")
        a_objects = _other_objects_of(a)
    try:
        yield World(a=a, b=b, a_tasks=tasks, b_task=b_task, revoked_key=second.key, a_objects=a_objects)
    finally:
        with django_db_blocker.unblock():
            call_command("flush", interactive=False, verbosity=0)
            billing.price_catalog_seed()


def _other_objects_of(tenant: Tenant) -> dict[str, str]:
    """An assistant, a conversation with it and a finished CSV export of ``tenant``."""
    from analytics import services as analytics

    assistant = tenant.client.post(
        "/api/v1/assistants/", {"name": "ORG-A-ONLY assistant", "system_prompt": "Be brief."}, format="json"
    )
    assert assistant.status_code == 201, assistant.content
    conversation = tenant.client.post("/api/v1/conversations/", {"assistant_id": assistant.json()["id"]}, format="json")
    assert conversation.status_code == 201, conversation.content
    export = tenant.client.post("/api/v1/analytics/exports/", {"start": str(_TODAY), "end": str(_TODAY)}, format="json")
    assert export.status_code == 202, export.content
    analytics.export_run(export_id=uuid.UUID(export.json()["id"]))  # what the low worker does
    return {
        "assistant_id": str(assistant.json()["id"]),
        "conversation_id": str(conversation.json()["id"]),
        "export_id": str(export.json()["id"]),
    }


def object_routes() -> list[str]:
    return [route for route in routes() if kind_of(route) == OBJECT]


def api_routes() -> list[str]:
    return [route for route in routes() if kind_of(route) in (OWN, OBJECT)]


def test_another_organizations_ids_are_404_on_every_object_route_and_method(world: World) -> None:
    b = key_client(world.b.issued.key)
    foreign: dict[tuple[str, str, str], Any] = {}
    unknown_ids = {name: str(uuid.uuid4()) for name in world.ids("pending")}
    for route in object_routes():
        for state in world.a_tasks:
            for method in METHODS:
                where = (method, route, state)
                foreign[where] = call(b, method, fill(route, **world.ids(state)))
                unknown = call(b, method, fill(route, **unknown_ids))
                # Indistinguishable from an id that does not exist: no existence oracle.
                assert (foreign[where].status_code, foreign[where].content) == (
                    unknown.status_code,
                    unknown.content,
                ), where
                assert foreign[where].status_code < 500, where
    # B's attempts changed nothing of A's.
    statuses = dict(AITask.objects.filter(id__in=world.a_tasks.values()).values_list("id", "status"))
    assert {str(k): v for k, v in statuses.items()} == {task: state for state, task in world.a_tasks.items()}
    # Wherever the owner is served (OPTIONS aside: DRF answers it with the view's metadata,
    # no object), B got a 404. The owner's calls run last (they may cancel A's task), and
    # its DELETEs after everything else (they remove the objects the other calls need).
    a = key_client(world.a.issued.key)
    served: set[str] = set()
    for (method, route, state), response in sorted(foreign.items(), key=lambda item: item[0][0] == "DELETE"):
        owner = call(a, method, fill(route, **world.ids(state)))
        if method != "OPTIONS" and (200 <= owner.status_code < 300 or owner.status_code == 409):
            assert response.status_code == 404, (method, route, state)
            if method != "HEAD":  # "not_found", or the object's own ("export_not_found")
                assert response.json()["code"].endswith("not_found")
            served.add(route)
    assert served == set(object_routes()), "routes the owner itself could not use prove nothing"


def test_no_route_or_method_answers_organization_b_with_organization_as_data(world: World) -> None:
    b = key_client(world.b.issued.key)
    for route in routes():
        if kind_of(route) == ADMIN:
            continue
        paths = [fill(route, **world.ids(state)) for state in world.a_tasks] if kind_of(route) == OBJECT else []
        if kind_of(route) != OBJECT:
            paths = [fill(route) + QUERIES.get(route, "")]
        for path in paths:
            for method in METHODS:
                response = call(b, method, path)
                assert response.status_code != 500, f"{method} {path}"
                text = content(response)
                for secret in world.secrets_of_a():
                    assert secret.encode() not in text, f"{method} {path} answered B with A's {secret!r}"


def test_lists_and_reports_hold_only_the_callers_rows(world: World) -> None:
    b = world.b.client
    a = world.a.client
    own = {t["id"] for t in b.get("/api/v1/ai-tasks/?limit=100").json()["results"]}
    assert own == {world.b_task}
    for status in ("pending", "processing", "done", "failed", "cancelled"):
        listed = {t["id"] for t in b.get(f"/api/v1/ai-tasks/?status={status}").json()["results"]}
        assert listed <= {world.b_task}, status
    # A's cursor only moves B's position in B's own list.
    cursor = a.get("/api/v1/ai-tasks/?limit=1").json()["next_cursor"]
    assert cursor
    page = b.get(f"/api/v1/ai-tasks/?cursor={cursor}&limit=100")
    assert page.status_code in (200, 400)
    if page.status_code == 200:
        assert {t["id"] for t in page.json()["results"]} <= {world.b_task}
    assert b.get("/api/v1/me/").json()["organization_id"] == world.b.organization_id
    # A has spent (the done task) and reserved (the pending one); B's budget shows only its own.
    a_budget, b_budget = a.get("/api/v1/billing/budget/").json(), b.get("/api/v1/billing/budget/").json()
    assert float(a_budget["spent_usd"]) > 0
    assert float(b_budget["spent_usd"]) == 0
    assert float(a_budget["reserved_usd"]) > 0
    usage = f"/api/v1/billing/usage/?{USAGE_RANGE}"
    for group in ("day", "model"):
        assert sum(r["tasks"] for r in a.get(f"{usage}&group_by={group}").json()["results"]) == 1
        assert b.get(f"{usage}&group_by={group}").json()["results"] == [], group


def test_idempotency_keys_are_scoped_to_the_organization(world: World) -> None:
    body = {"prompt": "Same key, same body, two organizations."}
    first = world.a.client.post("/api/v1/ai-tasks/", body, format="json", HTTP_IDEMPOTENCY_KEY="shared-key")
    second = world.b.client.post("/api/v1/ai-tasks/", body, format="json", HTTP_IDEMPOTENCY_KEY="shared-key")
    assert first.status_code == second.status_code == 202
    assert second["Idempotent-Replayed"] == "false"
    assert first.json()["id"] != second.json()["id"]
    assert str(AITask.objects.get(id=second.json()["id"]).organization_id) == world.b.organization_id


# One test per credential. The per-address limit on failed logins is lifted here (every
# route and method is more failures than it allows a minute; tests/api/test_throttling.py
# proves that limit).
@pytest.mark.parametrize("credential", ["revoked", "missing", "garbage", "wrong secret"])
def test_revoked_missing_and_bad_keys_are_401_on_every_api_route_and_method(
    world: World, credential: str, settings: Any
) -> None:
    settings.AUTH_FAILURES_PER_MINUTE = 0
    key = {
        "revoked": world.revoked_key,  # a key of A, on A's own objects
        "garbage": "not-a-key",
        "wrong secret": world.a.issued.key[:-4] + "zzzz",
    }.get(credential)
    client = key_client(key) if key else Client()
    for route in api_routes():
        # The key is refused before any object is looked up: one of A's ids is enough.
        path = fill(route, **world.ids("pending"))
        for method in METHODS:
            response = call(client, method, path)
            assert response.status_code == 401, f"{credential} key: {method} {route}"
            if method != "HEAD":
                assert response.json()["type"] == "client_error"
    assert AITask.objects.filter(organization_id=world.b.organization_id).count() == 1  # nothing was created


def test_admin_needs_a_staff_session_on_every_admin_route(world: World) -> None:
    member = User.objects.create_user("member@tenant.test", "pw")
    logged_in = Client()
    logged_in.force_login(member)
    clients = {"anonymous": Client(), "non-staff user": logged_in, "API key": key_client(world.a.issued.key)}
    admin_routes = [route for route in routes() if kind_of(route) == ADMIN]
    for route in admin_routes:
        path = fill(route, object_id=world.a_tasks["pending"], content_type_id="1", id=str(member.pk))
        for who, client in clients.items():
            for method in ("GET", "POST"):
                response = call(client, method, path)
                where = f"{who}: {method} {path}"
                if route == "admin/login/":
                    assert response.status_code in (200, 302), where  # the form (or a redirect after POST)
                    continue
                assert response.status_code == 302, where
                assert response["Location"].startswith(("/admin/login/", "/admin/")), where
                assert "/admin/login/" in response["Location"] or route == "admin/logout/", where
    staff = Client()
    staff.force_login(User.objects.create_superuser("ops@switchyard.test", "pw"))
    assert staff.get("/admin/").status_code == 200
    assert staff.get(f"/admin/llm/aitask/{world.a_tasks['pending']}/change/").status_code == 200
