"""The SSE view's database work, in one worker thread (``_open``): authenticate, count the
request against the limits, take the stream's position and read the snapshot, then let go
of the connection before waiting on Redis (SPEC §4: an open stream holds no database
connection)."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection

from llm.api.sse import MethodNotAllowed, _open
from llm.services import TaskNotFound
from llm.streams import publish_delta
from users.services import InvalidApiKey, RateLimited

pytestmark = pytest.mark.django_db(transaction=True)


def in_thread(function, *args):
    """Run ``function`` on a new thread, as ``sync_to_async(thread_sensitive=False)`` does, and
    report its result and whether that thread still has a database connection open."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = function(*args)
        except Exception as exc:
            outcome["error"] = exc
        outcome["connection_open"] = connection.connection is not None

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    return outcome


META = {"REMOTE_ADDR": "127.0.0.1"}


def test_open_takes_the_position_and_the_snapshot_and_closes_its_connection(tenant) -> None:
    task_id = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "Watch me run"}, format="json").json()["id"]
    event_id = publish_delta(task_id, "before the open")
    outcome = in_thread(_open, f"Bearer {tenant.issued.key}", META, uuid.UUID(task_id), "GET")
    assert outcome["result"].snapshot["status"] == "pending"
    assert outcome["result"].last_id == event_id
    assert outcome["connection_open"] is False


@pytest.mark.parametrize("failure", ["missing task", "bad key", "other method", "throttled"])
def test_open_closes_its_connection_on_every_refusal_too(tenant, settings, failure: str) -> None:
    key = "sy_00000000_not-a-key" if failure == "bad key" else tenant.issued.key
    method = "POST" if failure == "other method" else "GET"
    if failure == "throttled":
        settings.KEY_REQUESTS_PER_MINUTE = 1
        in_thread(_open, f"Bearer {key}", META, uuid.uuid4(), "GET")  # the one request of the minute
    outcome = in_thread(_open, f"Bearer {key}", META, uuid.uuid4(), method)
    expected = {
        "missing task": TaskNotFound,
        "bad key": InvalidApiKey,
        "other method": MethodNotAllowed,  # after authentication, without reading the task
        "throttled": RateLimited,
    }[failure]
    assert isinstance(outcome["error"], expected)
    assert outcome["connection_open"] is False
