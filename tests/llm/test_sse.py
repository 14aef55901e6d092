"""The SSE view's database work: authenticate and read the snapshot, then let go of the
connection before waiting on Redis (SPEC §4: an open stream holds no database connection)."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection

from llm.api.sse import _load_snapshot
from llm.services import TaskNotFound
from users.services import InvalidApiKey

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
    outcome = in_thread(_load_snapshot, tenant.issued.key, uuid.UUID(task_id))
    assert outcome["result"]["status"] == "pending"
    assert outcome["connection_open"] is False


@pytest.mark.parametrize("failure", ["bad key", "other task"])
def test_connection_is_closed_on_refusal_too(tenant, failure: str) -> None:
    key = "sy_00000000_not-a-key" if failure == "bad key" else tenant.issued.key
    outcome = in_thread(_load_snapshot, key, uuid.uuid4())
    assert isinstance(outcome["error"], InvalidApiKey if failure == "bad key" else TaskNotFound)
    assert outcome["connection_open"] is False
