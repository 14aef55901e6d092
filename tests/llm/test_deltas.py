"""A streamed answer's chunks go to the task's Redis stream gathered (llm.deltas): the
first at once, the later ones joined, SSE_DELTA_FLUSH_S later; a call that ends flushes
its own before its status, an aborted one drops them. Real Redis; a real worker runs them
in tests/pipeline."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from django_redis import get_redis_connection
from structlog.testing import capture_logs

from llm import deltas, streams
from llm.providers import Completion, TextDelta
from llm.providers.base import CallAborted, CallGuard
from llm.services import execution
from tests.factories import AITaskFactory

LONG = 30.0  # a buffer's own flusher stays out of the way: only explicit flushes send


def events(task_id: uuid.UUID | str) -> list[tuple[str, dict]]:
    raw = get_redis_connection("default").xrange(streams.stream_key(task_id))
    return [(fields[b"event"].decode(), json.loads(fields[b"data"])) for _, fields in raw]


@pytest.fixture
def task_ids():
    made: list[uuid.UUID] = []

    def make() -> uuid.UUID:
        made.append(uuid.uuid4())
        return made[-1]

    yield make
    if made:
        get_redis_connection("default").delete(*[streams.stream_key(task_id) for task_id in made])


def test_later_chunks_arrive_joined_within_the_default_interval(settings, task_ids) -> None:
    """With the production default (not set in the test settings), twenty chunks after the
    first reach the stream as one event or a few, not twenty, and soon."""
    assert "SSE_DELTA_FLUSH_S" not in os.environ and 0 < settings.SSE_DELTA_FLUSH_S <= 0.1
    task_id = task_ids()
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


def test_flushing_a_task_sends_its_chunks_now_and_only_its_own(task_ids) -> None:
    task_id, other = task_ids(), task_ids()
    buffer = deltas.DeltaBuffer(LONG)
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


def test_chunks_of_two_attempts_are_never_joined(task_ids) -> None:
    task_id = task_ids()
    buffer = deltas.DeltaBuffer(LONG)
    buffer.add(task_id, "lost", 1)
    buffer.add(task_id, "kept", 2)
    buffer.add(task_id, " too", None)  # a chunk without an attempt tag
    buffer.flush(task_id)
    assert events(task_id) == [
        ("delta", {"text": "lost", "attempt": 1}),
        ("delta", {"text": "kept", "attempt": 2}),
        ("delta", {"text": " too"}),
    ]


def test_a_tasks_flush_waits_for_a_send_of_its_own_chunks_not_for_other_tasks(monkeypatch, task_ids) -> None:
    """A slow send (Redis busy) of task A's chunks holds back A's own flush, so A's chunks
    stay in order, but not B's: B's call ends and frees its thread."""
    a, b = task_ids(), task_ids()
    buffer = deltas.DeltaBuffer(LONG)
    release, sending = threading.Event(), threading.Event()
    real_send = deltas._send

    def slow_send(batch):
        if any(task_id == str(a) for task_id, _ in batch):
            sending.set()
            assert release.wait(10)
        real_send(batch)

    monkeypatch.setattr(deltas, "_send", slow_send)
    buffer.add(a, "first", 1)
    stuck = threading.Thread(target=buffer.flush)  # the flusher's round, stuck in A's send
    stuck.start()
    assert sending.wait(5)
    buffer.add(a, " second", 1)
    buffer.add(b, "free", 1)
    buffer.flush(b)  # returns while A's send still waits
    assert events(b) == [("delta", {"text": "free", "attempt": 1})]
    own = threading.Thread(target=buffer.flush, args=(a,))
    own.start()
    own.join(timeout=0.3)
    assert own.is_alive() and events(a) == []  # waits for the send of its earlier chunks
    release.set()
    stuck.join(timeout=5)
    own.join(timeout=5)
    assert not own.is_alive()
    assert events(a) == [("delta", {"text": "first", "attempt": 1}), ("delta", {"text": " second", "attempt": 1})]


def test_discard_drops_a_tasks_chunks_only(task_ids) -> None:
    task_id, other = task_ids(), task_ids()
    buffer = deltas.DeltaBuffer(LONG)
    buffer.add(task_id, "never", 1)
    buffer.add(other, "kept", 1)
    buffer.discard(task_id)
    buffer.flush()
    assert events(task_id) == [] and events(other) == [("delta", {"text": "kept", "attempt": 1})]


def test_zero_sends_every_chunk_at_once(settings, task_ids) -> None:
    settings.SSE_DELTA_FLUSH_S = 0
    task_id = task_ids()
    streams.send_delta(task_id, "a", 1, first=True)
    streams.send_delta(task_id, "b", 1, first=False)
    streams.send_delta(task_id, "c", 1, first=False)
    assert [data["text"] for _, data in events(task_id)] == ["a", "b", "c"]


def test_redis_down_loses_the_chunks_not_the_call(monkeypatch, task_ids) -> None:
    task_id = task_ids()
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    monkeypatch.setattr(deltas, "get_redis_connection", lambda alias: down)
    buffer = deltas.DeltaBuffer(LONG)
    buffer.add(task_id, "into the void", 1)
    with capture_logs() as logs:
        buffer.flush(task_id)  # logged, not raised
    assert [log["event"] for log in logs] == ["stream_publish_failed"]
    monkeypatch.undo()
    buffer.flush()
    assert events(task_id) == []  # dropped: a stream is a live view, the result is in PostgreSQL


def test_a_dead_flusher_is_replaced_by_the_next_chunk(task_ids) -> None:
    buffer = deltas.DeltaBuffer(0.01)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    buffer._flusher = dead  # as if an error had ended it
    task_id = task_ids()
    buffer.add(task_id, "still sent", 1)
    deadline = time.monotonic() + 5
    while not events(task_id):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert buffer._flusher is not dead


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_starts_with_an_empty_buffer(monkeypatch, task_ids) -> None:
    """The prefork pool forks: the child must not inherit the parent's chunks (they would
    be sent twice) nor count on a flusher thread it does not have."""
    monkeypatch.setattr(deltas, "_buffer", deltas.DeltaBuffer(LONG))
    childs, parents = task_ids(), task_ids()
    deltas.add(parents, "the parent's", 1)
    pid = os.fork()
    if pid == 0:  # the child: only Redis, then out without running pytest's exit handlers
        code = 1
        try:
            deltas.add(childs, "the child's", 1)
            deltas.flush()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while (waited := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(waited[1]) == 0
    assert events(childs) == [("delta", {"text": "the child's", "attempt": 1})]
    assert events(parents) == []  # still the parent's to send
    deltas.flush(parents)
    assert events(parents) == [("delta", {"text": "the parent's", "attempt": 1})]


@pytest.mark.django_db
class TestTheCall:
    """``execution._run``, the loop over a provider's stream, with the process's buffer."""

    @pytest.fixture(autouse=True)
    def quiet_buffer(self, monkeypatch):
        monkeypatch.setattr(deltas, "_buffer", deltas.DeltaBuffer(LONG))

    def test_a_call_that_ends_flushes_its_chunks_before_returning(self) -> None:
        task = AITaskFactory.create(processing=True)
        completion = Completion(
            text="One two three", input_tokens=3, output_tokens=3, model=task.model, finish_reason="stop"
        )
        stream: list[TextDelta | Completion] = [TextDelta("One"), TextDelta(" two"), TextDelta(" three"), completion]
        assert execution._run(iter(stream), task, [], CallGuard()) == completion
        assert events(task.id) == [
            ("delta", {"text": "One", "attempt": 1}),
            ("delta", {"text": " two three", "attempt": 1}),
        ]
        get_redis_connection("default").delete(streams.stream_key(task.id))

    def test_an_aborted_call_drops_its_buffered_chunks(self) -> None:
        """Cancelled (or its lease lost) mid-stream: the stream may already carry the
        cancellation or the next attempt, so what was buffered is not sent after it."""
        task = AITaskFactory.create(processing=True)
        guard = CallGuard()

        def stream() -> Iterator[TextDelta | Completion]:
            yield TextDelta("One")
            yield TextDelta(" two")
            guard.abort("cancelled")
            raise CallAborted("cancelled")

        with pytest.raises(CallAborted):
            execution._run(stream(), task, [], guard)
        deltas.flush()
        assert events(task.id) == [("delta", {"text": "One", "attempt": 1})]
        get_redis_connection("default").delete(streams.stream_key(task.id))
