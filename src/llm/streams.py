"""Per-task event streams in Redis (SSE transport).

Workers append ``status``, ``attempt`` and ``delta`` events to a capped Redis stream per
task; the SSE view reads them with blocking XREAD, so a client that reconnects with
``Last-Event-ID`` resumes exactly where it stopped. Streams expire after
SSE_STREAM_TTL_S. Redis is not the source of truth: a lost stream costs a client its
live view, never a task.

An ``attempt`` event (``{"attempt": n}``) opens attempt ``n``: the deltas before it
belong to an attempt that failed, and a client discards the text it built from them.
Deltas carry the attempt they belong to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import redis.asyncio as aioredis
import structlog
from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from contracts.llm import TERMINAL_STATUSES
from llm import telemetry

if TYPE_CHECKING:
    from contracts.llm import AITask as AITaskContract
    from llm.models import AITask

log = structlog.get_logger(__name__)
MAX_EVENTS_PER_TASK = 5000
READ_MARGIN_S = 5.0  # socket timeout beyond the longest blocking read
TERMINAL_SEARCH = 200  # events searched back from the end for the terminal status


@dataclass(frozen=True, slots=True)
class StreamEvent:
    id: str
    event: str
    data: dict[str, Any]


def stream_key(task_id: UUID | str) -> str:
    return f"sy:task-events:{task_id}"


def cancel_key(task_id: UUID | str) -> str:
    return f"sy:task-cancelled:{task_id}"


def publish(task_id: UUID | str, event: str, data: Mapping[str, Any]) -> str | None:
    """Append one event; returns its id, or None when Redis is unavailable (logged)."""
    try:
        with telemetry.stream_publish(task_id, event):
            client = get_redis_connection("default")
            pipe = client.pipeline(transaction=False)
            pipe.xadd(
                stream_key(task_id),
                {"event": event, "data": json.dumps(data, default=str)},
                maxlen=MAX_EVENTS_PER_TASK,
                approximate=True,
            )
            pipe.expire(stream_key(task_id), settings.SSE_STREAM_TTL_S)
            event_id = pipe.execute()[0]
    except RedisError:
        log.warning("stream_publish_failed", task_id=str(task_id), event_type=event, exc_info=True)
        return None
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)


def status_payload(task: AITask | AITaskContract) -> dict[str, Any]:
    """What a ``status`` event carries (no prompt: it may be large)."""
    return {
        "id": str(task.id),
        "status": task.status,
        "attempts": task.attempts,
        "result": task.result,
        "error": task.error,
        "cached": task.cached,
        "input_tokens": task.input_tokens,
        "output_tokens": task.output_tokens,
        "cost_usd": format(task.cost_usd, "f"),  # "0.0000000000", never "0E-10"
    }


def publish_status(task: AITask | AITaskContract) -> str | None:
    return publish(task.id, "status", status_payload(task))


def publish_attempt(task_id: UUID | str, attempt: int) -> str | None:
    """Mark the start of attempt ``attempt``: what was streamed before it is void."""
    return publish(task_id, "attempt", {"attempt": attempt})


def publish_delta(task_id: UUID | str, text: str, attempt: int | None = None) -> str | None:
    """Append one chunk of the answer, tagged with its attempt when given."""
    data: dict[str, Any] = {"text": text}
    if attempt is not None:
        data["attempt"] = attempt
    return publish(task_id, "delta", data)


def mark_cancelled(task_id: UUID | str) -> None:
    try:
        get_redis_connection("default").set(cancel_key(task_id), "1", ex=settings.SSE_STREAM_TTL_S)
    except RedisError:
        log.warning("cancel_flag_failed", task_id=str(task_id), exc_info=True)


def is_cancelled(task_id: UUID | str) -> bool:
    try:
        return bool(get_redis_connection("default").exists(cancel_key(task_id)))
    except RedisError:
        return False


def _decode(raw_id: bytes | str, fields: Mapping[bytes, bytes]) -> StreamEvent:
    return StreamEvent(
        id=raw_id.decode() if isinstance(raw_id, bytes) else raw_id,
        event=fields[b"event"].decode(),
        data=json.loads(fields[b"data"]),
    )


def id_order(event_id: str) -> tuple[int, int]:
    """Stream ids (``<ms>-<seq>``) as comparable numbers."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def is_terminal(event: StreamEvent) -> bool:
    return event.event == "status" and event.data.get("status") in TERMINAL_STATUSES


class AsyncStreamReader:
    """Reads one task's stream from an event loop; holds a Redis connection, never a DB one.

    A blocking read waits at most ``block_s`` (the heartbeat interval by default), and the
    connection's socket timeout is that plus a margin: with redis-py's default of 5 s, an
    XREAD blocking longer than 5 s failed with a TimeoutError and killed the stream."""

    def __init__(self, task_id: UUID | str, *, block_s: float | None = None) -> None:
        self._key = stream_key(task_id)
        self._block_ms = max(int(1000 * (settings.SSE_HEARTBEAT_S if block_s is None else block_s)), 1)
        self._client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=2,
            socket_timeout=self._block_ms / 1000 + READ_MARGIN_S,
        )

    async def last_id(self) -> str:
        entries = cast("list[Any]", await self._client.xrevrange(self._key, count=1))
        return _decode(entries[0][0], entries[0][1]).id if entries else "0-0"

    async def read(self, after: str, block_ms: int | None = None) -> list[StreamEvent]:
        """What follows ``after``, waiting up to ``block_ms`` (never beyond the socket timeout)."""
        block = self._block_ms if block_ms is None else min(max(block_ms, 1), self._block_ms)
        response = cast("list[Any]", await self._client.xread({self._key: after}, block=block, count=100))
        return [_decode(raw_id, fields) for _, entries in response for raw_id, fields in entries]

    async def between(self, after: str, until: str) -> list[StreamEvent]:
        """The events after ``after`` up to and including ``until``, without waiting."""
        entries = cast(
            "list[Any]", await self._client.xrange(self._key, min=f"({after}", max=until, count=MAX_EVENTS_PER_TASK)
        )
        return [_decode(raw_id, fields) for raw_id, fields in entries]

    async def terminal_id(self) -> str | None:
        """The id of the latest terminal ``status`` event, if the stream still has one. Only
        the tail is searched: nothing but a few late deltas ever follows the end."""
        entries = cast("list[Any]", await self._client.xrevrange(self._key, count=TERMINAL_SEARCH))
        return next((event.id for event in (_decode(*entry) for entry in entries) if is_terminal(event)), None)

    async def append(self, event: str, data: Mapping[str, Any]) -> str:
        pipe = self._client.pipeline(transaction=False)
        pipe.xadd(self._key, {"event": event, "data": json.dumps(data, default=str)}, maxlen=MAX_EVENTS_PER_TASK)
        pipe.expire(self._key, settings.SSE_STREAM_TTL_S)
        event_id = (await pipe.execute())[0]
        return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

    async def exists(self) -> bool:
        return bool(await self._client.exists(self._key))

    async def close(self) -> None:
        await self._client.aclose()
