"""The SSE view's database work: authenticate and read the snapshot, then let go of the
connection before waiting on Redis (SPEC §4: an open stream holds no database connection)."""

from __future__ import annotations

import threading
import uuid

import pytest
from django.db import connection

from llm.api.sse import _load_snapshot
from llm.services import TaskNotFound
from users.services import InvalidApiKey, api_key_authenticate, bearer_authenticate

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
    outcome = in_thread(_load_snapshot, api_key_authenticate(raw_key=tenant.issued.key), uuid.UUID(task_id))
    assert outcome["result"]["status"] == "pending"
    assert outcome["connection_open"] is False


def test_connection_is_closed_on_a_missing_task_too(tenant) -> None:
    outcome = in_thread(_load_snapshot, api_key_authenticate(raw_key=tenant.issued.key), uuid.uuid4())
    assert isinstance(outcome["error"], TaskNotFound)
    assert outcome["connection_open"] is False


@pytest.mark.parametrize("key", ["valid", "sy_00000000_not-a-key"])
def test_stream_authentication_closes_its_connection(tenant, key: str) -> None:
    """``stream_authenticate``'s thread (key lookup, throttle) lets go of its connection,
    also when the key is refused."""
    from users.services import _stream_authenticate

    header = f"Bearer {tenant.issued.key if key == 'valid' else key}"
    outcome = in_thread(_stream_authenticate, header, {"REMOTE_ADDR": "127.0.0.1"})
    if key == "valid":
        assert outcome["result"] == bearer_authenticate(authorization=header, meta={"REMOTE_ADDR": "127.0.0.1"})
    else:
        assert isinstance(outcome["error"], InvalidApiKey)
    assert outcome["connection_open"] is False
