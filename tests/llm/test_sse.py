"""The SSE view's database work, in one worker thread: authenticate, count the request
against the limits and read the snapshot, then let go of the connection before waiting
on Redis (SPEC §4: an open stream holds no database connection)."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection

from llm.api.sse import _open
from llm.services import TaskNotFound
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


def test_snapshot_closes_its_connection(tenant) -> None:
    task_id = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "Watch me run"}, format="json").json()["id"]
    outcome = in_thread(_open, "127.0.0.1", tenant.issued.key, uuid.UUID(task_id), "GET")
    assert outcome["result"]["status"] == "pending"
    assert outcome["connection_open"] is False


def test_another_method_is_refused_after_authentication_without_reading_the_task(tenant) -> None:
    outcome = in_thread(_open, "127.0.0.1", tenant.issued.key, uuid.uuid4(), "POST")
    assert "error" not in outcome and outcome["result"] is None  # no TaskNotFound: not read
    assert outcome["connection_open"] is False
    refused = in_thread(_open, "127.0.0.1", "sy_00000000_not-a-key", uuid.uuid4(), "POST")
    assert isinstance(refused["error"], InvalidApiKey)


@pytest.mark.parametrize("failure", ["bad key", "other task", "throttled"])
def test_connection_is_closed_on_refusal_too(tenant, settings, failure: str) -> None:
    key = "sy_00000000_not-a-key" if failure == "bad key" else tenant.issued.key
    if failure == "throttled":
        settings.KEY_REQUESTS_PER_MINUTE = 1
        in_thread(_open, "127.0.0.1", key, uuid.uuid4(), "GET")  # the one request of the minute
    outcome = in_thread(_open, "127.0.0.1", key, uuid.uuid4(), "GET")
    expected = {"bad key": InvalidApiKey, "other task": TaskNotFound, "throttled": RateLimited}[failure]
    assert isinstance(outcome["error"], expected)
    assert outcome["connection_open"] is False
