"""A streamed answer's chunks, gathered on their way to the task's Redis stream.

A provider streams an answer in hundreds of chunks (a token or a word each). One XADD per
chunk cost ``worker-default`` a Redis round trip and a wake-up per chunk (428 µs of CPU
per chunk at 300 calls, docs/decisions/stream-deltas.md). So an attempt's first chunk
still goes out at once (time to first token), and the later ones wait in this process's
buffer: ``SSE_DELTA_FLUSH_S`` after the first of them arrives, a flusher thread sends what
every call of the process gathered, in one pipeline, one ``delta`` event per task and
attempt with their text joined. A reader sees the same text in fewer events, normally
that interval (plus the send) later at most.

``flush(task_id)`` sends one task's chunks at once, after any send already writing its
earlier ones: the worker calls it when a call ends (done, failed, to be retried), before
the status event, so the chunks of a call that ends come before its status.
``discard(task_id)`` drops them instead when the call was aborted (cancelled, its lease
lost): the stream may already carry the cancellation or the next attempt.

Best effort, like every stream event: a failed send drops its batch (logged), never a
task, and a crashed process loses the chunks it had not sent yet.
"""

from __future__ import annotations

import json
import os
import threading
import time
from uuid import UUID

import structlog
from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from kernel import tracing

log = structlog.get_logger(__name__)


class DeltaBuffer:
    """The chunks of every call of one process, waiting for the next flush.

    ``interval_s`` is how long the first chunk of an empty buffer waits for the flusher
    thread; None reads SSE_DELTA_FLUSH_S each time (the process's buffer)."""

    def __init__(self, interval_s: float | None = None) -> None:
        self._interval_s = interval_s
        self._lock = threading.Condition()  # the buffer and the tasks being sent
        self._pending: dict[tuple[str, int | None], list[str]] = {}
        self._sending: set[str] = set()  # tasks whose chunks a send is writing right now
        self._waiting = threading.Event()  # set while the buffer holds chunks
        self._flusher: threading.Thread | None = None

    def add(self, task_id: UUID | str, text: str, attempt: int | None) -> None:
        with self._lock:
            self._pending.setdefault((str(task_id), attempt), []).append(text)
            self._waiting.set()
            if self._flusher is None or not self._flusher.is_alive():
                self._flusher = threading.Thread(target=self._flush_forever, name="delta-flusher", daemon=True)
                self._flusher.start()

    def flush(self, task_id: UUID | str | None = None) -> None:
        """Send the chunks of ``task_id`` (of every task when None) now. A task's flush
        first waits for a send that is writing its earlier chunks (its chunks stay in
        order), never for the sends of other tasks."""
        with self._lock:
            if task_id is None:  # the tasks being sent keep their new chunks for next time
                batch = {key: parts for key, parts in self._pending.items() if key[0] not in self._sending}
            else:
                wanted = str(task_id)
                self._lock.wait_for(lambda: wanted not in self._sending)
                batch = {key: parts for key, parts in self._pending.items() if key[0] == wanted}
            for key in batch:
                del self._pending[key]
            if not self._pending:
                self._waiting.clear()
            tasks = {key[0] for key in batch}
            self._sending |= tasks
        try:
            if batch:
                _send(batch)
        finally:
            with self._lock:
                self._sending -= tasks
                self._lock.notify_all()

    def discard(self, task_id: UUID | str) -> None:
        """Drop the chunks of ``task_id``: its call was aborted (cancelled, its lease
        lost), and its stream may already carry what comes after it."""
        wanted = str(task_id)
        with self._lock:
            for key in [key for key in self._pending if key[0] == wanted]:
                del self._pending[key]
            if not self._pending:
                self._waiting.clear()

    def _flush_forever(self) -> None:
        while True:
            self._waiting.wait()  # an idle process sleeps here
            interval = settings.SSE_DELTA_FLUSH_S if self._interval_s is None else self._interval_s
            time.sleep(max(interval, 0.001))  # the first chunk waits this long, then the send
            try:
                self.flush()
            except Exception:  # the flusher must outlive any one bad batch (add() restarts a dead one)
                log.exception("stream_delta_flush_failed")


def _send(batch: dict[tuple[str, int | None], list[str]]) -> None:
    from llm.streams import MAX_EVENTS_PER_TASK, stream_key

    try:
        with tracing.quiet():  # chunks are counted on the provider span, not traced one by one
            pipe = get_redis_connection("default").pipeline(transaction=False)
            for (task_id, attempt), parts in batch.items():
                data: dict[str, object] = {"text": "".join(parts)}
                if attempt is not None:
                    data["attempt"] = attempt
                fields = {"event": "delta", "data": json.dumps(data)}
                pipe.xadd(stream_key(task_id), fields, maxlen=MAX_EVENTS_PER_TASK, approximate=True)
            pipe.execute()
    except RedisError:
        log.warning("stream_publish_failed", tasks=len(batch), event_type="delta", exc_info=True)


_buffer = DeltaBuffer()


def _after_fork() -> None:  # a forked child (the prefork pool) has no flusher thread
    global _buffer
    _buffer = DeltaBuffer()


os.register_at_fork(after_in_child=_after_fork)


def add(task_id: UUID | str, text: str, attempt: int | None = None) -> None:
    """Queue one chunk (not an attempt's first: publish that one at once)."""
    _buffer.add(task_id, text, attempt)


def flush(task_id: UUID | str | None = None) -> None:
    """Send the queued chunks of ``task_id`` (of every task when None) now."""
    _buffer.flush(task_id)


def discard(task_id: UUID | str) -> None:
    """Drop the queued chunks of ``task_id`` (an aborted call)."""
    _buffer.discard(task_id)
