"""A streamed answer's chunks go to the task's Redis stream gathered (llm.deltas): the
first at once, the later ones joined, at most SSE_DELTA_FLUSH_S later, every one before
the call's status. Real Redis; a real worker runs them in tests/pipeline."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid

import pytest
import redis
from django_redis import get_redis_connection

from llm import deltas, streams


def events(task_id: uuid.UUID) -> list[tuple[str, dict]]:
    raw = get_redis_connection("default").xrange(streams.stream_key(task_id))
    return [(fields[b"event"].decode(), json.loads(fields[b"data"])) for _, fields in raw]


@pytest.fixture
def task_id():
    task_id = uuid.uuid4()
    yield task_id
    get_redis_connection("default").delete(streams.stream_key(task_id))


def test_later_chunks_arrive_joined_within_the_default_interval(settings, task_id) -> None:
    """With the production default (not set in the test settings), twenty chunks after the
    first reach the stream as one event or a few, not twenty, and soon."""
    assert "SSE_DELTA_FLUSH_S" not in os.environ and 0 < settings.SSE_DELTA_FLUSH_S <= 0.1
    streams.send_delta(task_id, "Once", 1, first=True)
    assert events(task_id) == [("delta", {"text": "Once", "attempt": 1})]  # at once: time to first token
    words = [f" word{i}" for i in range(20)]
    for word in words:
        streams.send_delta(task_id, word, 1, first=False)
    deadline = time.monotonic() + 5
    while "".join(d["text"] for _, d in events(task_id)) != "Once" + "".join(words):
        assert time.monotonic() < deadline, events(task_id)
        time.sleep(0.01)
    later = events(task_id)[1:]
    assert 1 <= len(later) <= 5, later  # one, unless a flush fell between the chunks
    assert all(kind == "delta" and data["attempt"] == 1 for kind, data in later)


def test_flushing_a_task_sends_its_chunks_now_and_only_its_own(settings, task_id) -> None:
    settings.SSE_DELTA_FLUSH_S = 30  # the buffer's own flusher stays out of the way
    other = uuid.uuid4()
    buffer = deltas.DeltaBuffer()
    try:
        buffer.add(task_id, "Hello", 2)
        buffer.add(other, "elsewhere", 1)
        buffer.add(task_id, ", world", 2)
        assert events(task_id) == [] and events(other) == []
        buffer.flush(task_id)
        streams.publish(task_id, "status", {"status": "done"})
        assert events(task_id) == [("delta", {"text": "Hello, world", "attempt": 2}), ("status", {"status": "done"})]
        assert events(other) == []
        buffer.flush()
        assert events(other) == [("delta", {"text": "elsewhere", "attempt": 1})]
    finally:
        get_redis_connection("default").delete(streams.stream_key(other))


def test_chunks_of_two_attempts_are_never_joined(settings, task_id) -> None:
    settings.SSE_DELTA_FLUSH_S = 30
    buffer = deltas.DeltaBuffer()
    buffer.add(task_id, "lost", 1)
    buffer.add(task_id, "kept", 2)
    buffer.add(task_id, " too", None)  # a chunk without an attempt tag
    buffer.flush(task_id)
    assert events(task_id) == [
        ("delta", {"text": "lost", "attempt": 1}),
        ("delta", {"text": "kept", "attempt": 2}),
        ("delta", {"text": " too"}),
    ]


def test_zero_sends_every_chunk_at_once(settings, task_id) -> None:
    settings.SSE_DELTA_FLUSH_S = 0
    streams.send_delta(task_id, "a", 1, first=True)
    streams.send_delta(task_id, "b", 1, first=False)
    streams.send_delta(task_id, "c", 1, first=False)
    assert [data["text"] for _, data in events(task_id)] == ["a", "b", "c"]


def test_redis_down_loses_the_chunks_not_the_call(settings, monkeypatch, task_id) -> None:
    settings.SSE_DELTA_FLUSH_S = 30
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    monkeypatch.setattr(deltas, "get_redis_connection", lambda alias: down)
    buffer = deltas.DeltaBuffer()
    buffer.add(task_id, "into the void", 1)
    buffer.flush(task_id)  # logged, not raised
    monkeypatch.undo()
    buffer.flush()
    assert events(task_id) == []  # dropped: a stream is a live view, the result is in PostgreSQL


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_with_an_empty_buffer(settings, task_id) -> None:
    """The prefork pool forks: the child must not inherit the parent's chunks (they would
    be sent twice) nor count on a flusher thread it does not have."""
    settings.SSE_DELTA_FLUSH_S = 30
    parents = uuid.uuid4()
    deltas.add(parents, "the parent's", 1)
    pid = os.fork()
    if pid == 0:  # the child: only Redis, then out without running pytest's exit handlers
        code = 1
        try:
            deltas.add(task_id, "the child's", 1)
            deltas.flush()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert events(task_id) == [("delta", {"text": "the child's", "attempt": 1})]
    assert events(parents) == []  # still the parent's to send
    deltas.flush(parents)
    assert events(parents) == [("delta", {"text": "the parent's", "attempt": 1})]
    get_redis_connection("default").delete(streams.stream_key(parents))
