"""SSE on real servers with the production stream settings: uvicorn (the `stream` role)
keeps an idle stream alive with the default 15 s heartbeat, and gunicorn (the `web` role)
refuses the events endpoint with an error that names the stream role."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from django.conf import settings

from tests.api.test_health import start_server
from tests.pipeline.conftest import wait_for
from tests.pipeline.test_pipeline import read_sse, submit

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_idle_stream_outlives_the_redis_socket_timeout_with_the_default_heartbeat(tenant, start_stream_server) -> None:
    # The production default, not the tests' 0.5 s: longer than redis-py's own 5 s
    # socket timeout, which used to kill every stream idle for 5 s.
    assert settings.SSE_HEARTBEAT_S == 15
    base = start_stream_server(SSE_HEARTBEAT_S=str(settings.SSE_HEARTBEAT_S))
    task_id = submit(tenant, "Nobody runs this one, it just waits")  # no worker: silence
    events: list[dict] = []
    comments: list[str] = []
    failure: list[BaseException] = []

    def read() -> None:
        try:
            read_sse(base, tenant, task_id, sink=events, comments=comments)
        except BaseException as exc:  # the stream dying is what this test looks for
            failure.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: events or failure, timeout=20)
    assert [e["data"]["status"] for e in events] == ["pending"]
    wait_for(lambda: comments or failure, timeout=settings.SSE_HEARTBEAT_S + 10, interval=0.2)
    assert not failure, f"the stream died while idle: {failure[0]!r}"
    assert comments == [": heartbeat"]
    assert reader.is_alive()  # still open after more than 5 s of silence
    # and it still delivers: a cancel ends it with the final status
    assert tenant.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/").status_code == 200
    reader.join(timeout=10)
    assert not reader.is_alive() and not failure
    assert events[-1]["data"]["status"] == "cancelled"


@pytest.fixture
def web_server(transactional_db: None) -> Iterator[str]:
    yield from start_server("wsgi")


def test_web_role_answers_events_with_421_naming_the_stream_role(tenant, web_server: str) -> None:
    task_id = submit(tenant, "Watch me on the wrong server")
    response = httpx.get(
        f"{web_server}/api/v1/ai-tasks/{task_id}/events/",
        headers={"Authorization": f"Bearer {tenant.issued.key}"},
        timeout=10,
    )
    assert response.status_code == 421
    body = response.json()
    assert body["code"] == "use_stream_role"
    assert "`stream` role" in body["detail"]
    # the worker thread is free again at once: the same server answers the next request
    assert httpx.get(f"{web_server}/api/v1/ai-tasks/{task_id}/", headers=response.request.headers).status_code == 200
