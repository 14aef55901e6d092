"""A streamed answer's chunks, gathered on their way to the task's Redis stream.

A provider streams an answer in hundreds of chunks (a token or a word each). One XADD per
chunk cost ``worker-default`` a Redis round trip and a wake-up per chunk: a third of its
CPU per task (docs/decisions/stream-deltas.md). So an attempt's first chunk still goes out
at once (time to first token), and the later ones wait in this process's buffer for at
most ``SSE_DELTA_FLUSH_S``: a flusher thread then sends what every call of the process
gathered, in one pipeline, one ``delta`` event per task and attempt with their text
joined. A reader sees the same text in fewer events, each at most that much later.

``flush(task_id)`` sends one task's chunks at once. The worker calls it when a call ends,
whatever the outcome, before any status event: a stream's deltas always come before its
terminal status. Sends are serialized, so a task's chunks also leave in order.

Best effort, like every stream event: Redis down loses the chunks (logged), never the
task, and a crashed process loses at most one interval of chunks of the calls it ran.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from uuid import UUID

import structlog
from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from kernel import tracing

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Gathered:
    parts: list[str] = field(default_factory=list)


class DeltaBuffer:
    """The chunks of every call of one process, waiting for the next flush."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the buffer
        self._sending = threading.Lock()  # one send at a time: a task's chunks leave in order
        self._pending: dict[tuple[str, int | None], _Gathered] = {}
        self._waiting = threading.Event()  # set while the buffer holds chunks
        self._flusher: threading.Thread | None = None

    def add(self, task_id: UUID | str, text: str, attempt: int | None) -> None:
        with self._lock:
            gathered = self._pending.setdefault((str(task_id), attempt), _Gathered())
            gathered.parts.append(text)
            self._waiting.set()
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_forever, name="delta-flusher", daemon=True)
                self._flusher.start()

    def flush(self, task_id: UUID | str | None = None) -> None:
        """Send the chunks of ``task_id`` (all of them when None) now."""
        with self._sending:
            with self._lock:
                if task_id is None:
                    batch, self._pending = self._pending, {}
                else:
                    wanted = str(task_id)
                    batch = {key: self._pending.pop(key) for key in [key for key in self._pending if key[0] == wanted]}
                if not self._pending:
                    self._waiting.clear()
            if batch:
                _send(batch)

    def _flush_forever(self) -> None:
        while True:
            self._waiting.wait()  # an idle process sleeps here
            time.sleep(settings.SSE_DELTA_FLUSH_S)  # the first chunk waits this long at most
            try:
                self.flush()
            except Exception:  # the flusher must outlive any one bad batch
                log.exception("stream_delta_flush_failed")


def _send(batch: dict[tuple[str, int | None], _Gathered]) -> None:
    from llm.streams import MAX_EVENTS_PER_TASK, stream_key

    try:
        with tracing.quiet():  # chunks are counted on the provider span, not traced one by one
            pipe = get_redis_connection("default").pipeline(transaction=False)
            for (task_id, attempt), gathered in batch.items():
                data: dict[str, object] = {"text": "".join(gathered.parts)}
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
