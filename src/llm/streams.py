"""Per-task event streams in Redis (SSE transport).

Workers append ``status`` and ``delta`` events to a capped Redis stream per task; the
SSE view reads them with blocking XREAD, so a client that reconnects with
``Last-Event-ID`` resumes exactly where it stopped. Streams expire after
SSE_STREAM_TTL_S. Redis is not the source of truth: a lost stream costs a client its
live view, never a task.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

import redis.asyncio as aioredis
import structlog
from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
MAX_EVENTS_PER_TASK = 5000


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


class AsyncStreamReader:
    """Reads one task's stream from an event loop; holds a Redis connection, never a DB one."""

    def __init__(self, task_id: UUID | str) -> None:
        self._key = stream_key(task_id)
        self._client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)

    async def last_id(self) -> str:
        entries = cast("list[Any]", await self._client.xrevrange(self._key, count=1))
        return _decode(entries[0][0], entries[0][1]).id if entries else "0-0"

    async def read(self, after: str, block_ms: int) -> list[StreamEvent]:
        response = cast("list[Any]", await self._client.xread({self._key: after}, block=max(block_ms, 1), count=100))
        return [_decode(raw_id, fields) for _, entries in response for raw_id, fields in entries]

    async def exists(self) -> bool:
        return bool(await self._client.exists(self._key))

    async def close(self) -> None:
        await self._client.aclose()
