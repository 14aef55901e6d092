"""The SSE view end to end in-process: the ASGI request path (Django's AsyncClient) with
the real Redis stream, and the WSGI path (Django's Client) that must refuse clearly.

What a real uvicorn and gunicorn do with it (and the 15 s default heartbeat) is in
tests/pipeline/test_streams.py."""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient, Client
from django_redis import get_redis_connection
from rest_framework.test import APIClient

from llm import streams
from llm.streams import publish_attempt, publish_delta
from tests.pipeline.conftest import TcpProxy
from tests.support import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    complete: bool = True  # the response ended by itself (False: still open when we stopped)
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)


def parse(body: bytes, reply: Reply) -> None:
    for block in body.decode().split("\n\n"):
        current: dict[str, Any] = {}
        for line in block.splitlines():
            if line.startswith(":"):
                reply.comments.append(line)
            else:
                name, _, value = line.partition(":")
                current[name] = value.removeprefix(" ")
        if "event" in current:
            current["data"] = json.loads(current["data"])
            reply.events.append(current)


def url(task_id: str) -> str:
    return f"/api/v1/ai-tasks/{task_id}/events/"


def read_events(
    task_id: str, key: str, *, last_event_id: str | None = None, after_connect: Any = None, timeout: float = 3
) -> Reply:
    """GET the events through the ASGI request path and read the body until it ends, or
    ``timeout`` seconds (then ``complete`` is False). ``after_connect`` runs once the view
    has answered and taken its stream position, before the body is read."""

    async def run() -> Reply:
        headers = {"Authorization": key if key.startswith("Basic ") else f"Bearer {key}"} if key else {}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        response = await AsyncClient().get(url(task_id), headers=headers)
        reply = Reply(status=response.status_code, headers=dict(response.items()))
        if not response.streaming:
            reply.body = response.content
            parse(reply.body, reply)
            return reply
        if after_connect is not None:
            after_connect()
        chunks: list[bytes] = []

        async def consume() -> None:
            async for chunk in response.streaming_content:  # type: ignore[attr-defined]
                chunks.append(chunk)
                parse(chunk, probe := Reply(0, {}))
                if any(e["event"] == "status" and e["data"]["status"] in ("done", "cancelled") for e in probe.events):
                    return  # a live stream ends itself after this; a test reads no further

        try:
            await asyncio.wait_for(consume(), timeout)
        except TimeoutError:
            reply.complete = False
        reply.body = b"".join(chunks)
        parse(reply.body, reply)
        return reply

    return async_to_sync(run)()


def submit(tenant) -> str:
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "Stream me an answer"}, format="json")
    assert response.status_code == 202, response.json()
    return str(response.json()["id"])


def cancelled(tenant) -> str:
    task_id = submit(tenant)
    assert tenant.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/").json()["status"] == "cancelled"
    return task_id


@pytest.fixture(autouse=True)
def _short_heartbeat(settings) -> None:
    settings.SSE_HEARTBEAT_S = 0.2  # a stream that wrongly stays open shows it in a second


# -- WSGI (the `web` role) -----------------------------------------------------------------


@pytest.mark.parametrize("authenticated", [True, False])
def test_wsgi_answers_a_clear_error_naming_the_stream_role(tenant, authenticated: bool) -> None:
    task_id = submit(tenant)
    headers = {"Authorization": f"Bearer {tenant.issued.key}"} if authenticated else {}
    response = Client(raise_request_exception=False).get(url(task_id), headers=headers)
    assert response.status_code == 421
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == "use_stream_role"
    assert "stream" in body["detail"] and "8100" in body["detail"]


# -- reconnecting after the end ------------------------------------------------------------


def test_fresh_connection_to_a_finished_task_gets_the_final_status_once(tenant) -> None:
    task_id = cancelled(tenant)
    reply = read_events(task_id, tenant.issued.key)
    assert (reply.status, reply.complete) == (200, True)
    assert [(e["event"], e["data"]["status"]) for e in reply.events] == [("status", "cancelled")]
    terminal_id = get_redis_connection("default").xrevrange(streams.stream_key(task_id), count=1)[0][0].decode()
    assert reply.events[0]["id"] == terminal_id  # so the reconnect below names the terminal event


def test_reconnect_after_the_terminal_event_is_204(tenant) -> None:
    task_id = cancelled(tenant)
    first = read_events(task_id, tenant.issued.key)
    # EventSource reconnects by itself when the response ends, with the last id it saw.
    again = read_events(task_id, tenant.issued.key, last_event_id=first.events[-1]["id"])
    assert (again.status, again.complete, again.body) == (204, True, b"")
    later = read_events(task_id, tenant.issued.key, last_event_id="99999999999999-0")
    assert later.status == 204


def test_reconnect_from_before_the_end_gets_the_rest_and_closes(tenant) -> None:
    task_id = submit(tenant)
    first = streams.publish(task_id, "delta", {"text": "Hel"})
    streams.publish(task_id, "delta", {"text": "lo"})
    tenant.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/")
    reply = read_events(task_id, tenant.issued.key, last_event_id=first)
    assert (reply.status, reply.complete) == (200, True)
    assert [e["event"] for e in reply.events] == ["delta", "status"]
    assert reply.events[0]["data"]["text"] == "lo"
    assert read_events(task_id, tenant.issued.key, last_event_id=reply.events[-1]["id"]).status == 204


def test_finished_task_whose_stream_expired_ends_too(tenant) -> None:
    task_id = cancelled(tenant)
    get_redis_connection("default").delete(streams.stream_key(task_id))
    fresh = read_events(task_id, tenant.issued.key)
    assert (fresh.complete, [e["data"]["status"] for e in fresh.events]) == (True, ["cancelled"])
    assert read_events(task_id, tenant.issued.key, last_event_id=fresh.events[0]["id"]).status == 204
    # a client that last saw an event of the expired stream gets the final state, then 204
    stale = read_events(task_id, tenant.issued.key, last_event_id="1-0")
    assert (stale.complete, [e["data"]["status"] for e in stale.events]) == (True, ["cancelled"])


def test_live_stream_still_waits_for_a_task_that_is_not_finished(tenant) -> None:
    task_id = submit(tenant)
    reply = read_events(task_id, tenant.issued.key, last_event_id="0-0", timeout=1)
    assert (reply.status, reply.complete) == (200, False)
    assert ": heartbeat" in reply.comments


# -- attempts ------------------------------------------------------------------------------


def test_attempt_event_tells_the_client_to_discard_earlier_deltas(tenant) -> None:
    task_id = submit(tenant)

    def worker_side() -> None:  # what execution does: two attempts, the first one failed
        publish_attempt(task_id, 1)
        publish_delta(task_id, "Half an ans", attempt=1)
        publish_attempt(task_id, 2)
        publish_delta(task_id, "A whole ", attempt=2)
        publish_delta(task_id, "answer.", attempt=2)
        streams.publish(task_id, "status", {"id": task_id, "status": "done"})

    reply = read_events(task_id, tenant.issued.key, after_connect=worker_side)
    kinds = [(e["event"], e["data"].get("attempt")) for e in reply.events]
    assert kinds == [
        ("status", None),  # the snapshot, pending
        ("attempt", 1),
        ("delta", 1),
        ("attempt", 2),
        ("delta", 2),
        ("delta", 2),
        ("status", None),
    ]
    text = ""
    for event in reply.events:  # the client's rule, as the docs state it
        if event["event"] == "attempt":
            text = ""
        elif event["event"] == "delta":
            text += event["data"]["text"]
    assert text == "A whole answer."


def test_replay_after_the_end_keeps_the_attempt_marks(tenant) -> None:
    task_id = submit(tenant)
    publish_attempt(task_id, 1)
    publish_delta(task_id, "lost", attempt=1)
    publish_attempt(task_id, 2)
    publish_delta(task_id, "kept", attempt=2)
    tenant.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/")
    reply = read_events(task_id, tenant.issued.key, last_event_id="0-0")
    assert [e["event"] for e in reply.events] == ["attempt", "delta", "attempt", "delta", "status"]
    assert reply.complete


def test_delta_without_an_attempt_has_no_attempt_field(tenant) -> None:
    task_id = str(uuid.uuid4())
    event_id = publish_delta(task_id, "plain")
    entry = get_redis_connection("default").xrange(streams.stream_key(task_id))[0]
    assert entry[0].decode() == event_id
    assert json.loads(entry[1][b"data"]) == {"text": "plain"}


def test_redis_down_is_503_not_500(tenant, settings) -> None:
    task_id = submit(tenant)
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # the stream reader's Redis only
    reply = read_events(task_id, tenant.issued.key)
    assert reply.status == 503
    assert json.loads(reply.body)["code"] == "stream_unavailable"
    assert reply.headers["Retry-After"] == "5"


def test_redis_lost_while_waiting_ends_the_response_cleanly(tenant, settings) -> None:
    """The client then reconnects with Last-Event-ID; no exception escapes to the server."""
    task_id = submit(tenant)
    redis_url = urlparse(settings.REDIS_URL)
    proxy = TcpProxy(redis_url.port or 6379)
    proxy.start()
    settings.REDIS_URL = redis_url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    reply = read_events(task_id, tenant.issued.key, after_connect=proxy.stop, timeout=30)
    assert (reply.status, reply.complete) == (200, True)
    assert [e["data"]["status"] for e in reply.events] == ["pending"]


@pytest.mark.parametrize("key", ["", " ", "Basic dXNlcjpwYXNz", "sy_00000000_not-a-key", "other org"])
def test_bearer_auth_is_required_and_scoped(make_tenant, key: str) -> None:
    """The stream answers exactly what a DRF view answers for the same credentials: both
    go through ``users.services.bearer_authenticate``."""
    alice, bob = make_tenant(), make_tenant()
    task_id = submit(alice)
    credentials = bob.issued.key if key == "other org" else key
    reply = read_events(task_id, credentials)
    expected = {"": (401, "not_authenticated"), "other org": (404, "not_found")}.get(
        key, (401, "authentication_failed")
    )
    assert (reply.status, json.loads(reply.body)["code"]) == expected
    if reply.status == 401:
        assert reply.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    headers = {"Authorization": credentials if credentials.startswith("Basic ") else f"Bearer {credentials}"}
    drf = APIClient().get(f"/api/v1/ai-tasks/{task_id}/", headers=headers if key else {})
    assert (drf.status_code, drf.json()["code"]) == expected


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_the_events_route_answers_405_in_json_to_other_methods(method: str, tenant) -> None:
    """Only GET (and HEAD) are served: after authentication (as DRF does), never a CSRF
    page or a stream."""
    path = f"/api/v1/ai-tasks/{uuid.uuid4()}/events/"
    call = getattr(AsyncClient(), method)
    response = async_to_sync(call)(path, headers={"Authorization": f"Bearer {tenant.issued.key}"})
    assert response.status_code == 405
    assert response.json()["code"] == "method_not_allowed" and response["Allow"] == "GET, HEAD"
