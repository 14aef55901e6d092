"""Per-task event streams in Redis (SSE transport).

Workers append ``status``, ``attempt`` and ``delta`` events to a capped Redis stream per
task; the SSE view reads them with blocking XREAD (one per event loop, over every open
stream: ``AsyncStreamReader``), so a client that reconnects with ``Last-Event-ID``
resumes exactly where it stopped. Streams expire after
SSE_STREAM_TTL_S. Redis is not the source of truth: a lost stream costs a client its
live view, never a task.

An ``attempt`` event (``{"attempt": n}``) opens attempt ``n``: the deltas before it
belong to an attempt that failed, and a client discards the text it built from them.
Deltas carry the attempt they belong to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

import redis
import redis.asyncio as aioredis
import structlog
from django.conf import settings
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from contracts.llm import TERMINAL_STATUSES
from llm import deltas, telemetry

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


def publish(task_id: UUID | str, event: str, data: Mapping[str, Any], *, refresh_ttl: bool = True) -> str | None:
    """Append one event; returns its id, or None when Redis is unavailable (logged).

    ``refresh_ttl=False`` appends with one XADD and leaves the stream's expiry as the event
    before it set it: for the deltas after an attempt's first (an attempt ends within its
    hard deadline, far inside SSE_STREAM_TTL_S, and its status events refresh the expiry).
    A delta is most of what a worker publishes, and the pipeline of two commands cost it
    twice the CPU of the XADD alone (docs/decisions/submit-path.md)."""
    fields = {"event": event, "data": json.dumps(data, default=str)}
    key = stream_key(task_id)
    try:
        with telemetry.stream_publish(task_id, event):
            client = get_redis_connection("default")
            if refresh_ttl:
                pipe = client.pipeline(transaction=False)
                pipe.xadd(key, fields, maxlen=MAX_EVENTS_PER_TASK, approximate=True)
                pipe.expire(key, settings.SSE_STREAM_TTL_S)
                event_id = pipe.execute()[0]
            else:
                event_id = client.xadd(key, fields, maxlen=MAX_EVENTS_PER_TASK, approximate=True)
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


def publish_delta(task_id: UUID | str, text: str, attempt: int | None = None, *, first: bool = True) -> str | None:
    """Append one chunk of the answer, tagged with its attempt when given; ``first=False``
    for the chunks after an attempt's first (they leave the stream's expiry alone)."""
    data: dict[str, Any] = {"text": text}
    if attempt is not None:
        data["attempt"] = attempt
    return publish(task_id, "delta", data, refresh_ttl=first)


def send_delta(task_id: UUID | str, text: str, attempt: int | None, *, first: bool) -> None:
    """One chunk of a running call. An attempt's first goes out at once (time to first
    token); the later ones through this process's buffer (``llm.deltas``), at most
    SSE_DELTA_FLUSH_S later, joined per task (0: each at once, as ``publish_delta``).
    The caller flushes the task's buffer (``deltas.flush``) when the call ends."""
    if first or settings.SSE_DELTA_FLUSH_S <= 0:
        publish_delta(task_id, text, attempt, first=first)
        return
    with telemetry.stream_publish(task_id, "delta"):  # counts the chunk on the provider span
        deltas.add(task_id, text, attempt)


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


# --- reading from an event loop: one shared connection set per process ---------------------

HUB_BLOCK_MS = 250  # the shared XREAD's wait: a newly watched stream joins it within this
COMMAND_CONNECTIONS = 16  # per event loop, for the short commands (XREVRANGE, XRANGE, ...)
POOL_WAIT_S = 10.0  # a command waits this long for a free connection before it fails
CONNECT_TIMEOUT_S = 2.0
COMMAND_TIMEOUT_S = 5.0


_sync_readers: dict[str, redis.Redis] = {}


def last_event_id(task_id: UUID | str) -> str:
    """The id of the stream's latest event (``"0-0"`` when it has none), from a worker
    thread: the SSE view takes it in the same thread as the key lookup and the snapshot.
    One client per Redis URL (settings.REDIS_URL, the stream reader's), shared by threads."""
    url = settings.REDIS_URL
    client = _sync_readers.get(url)
    if client is None:
        client = _sync_readers.setdefault(
            url, redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S)
        )
    entries = cast("list[Any]", client.xrevrange(stream_key(task_id), count=1))
    return _decode(entries[0][0], entries[0][1]).id if entries else "0-0"


class _Watch:
    """One reader's place in the hub: its stream, how far the hub has delivered to it, and
    the events delivered but not read yet."""

    __slots__ = ("arrived", "error", "key", "pending", "position")

    def __init__(self, key: str, position: str) -> None:
        self.key = key
        self.position = position
        self.pending: list[StreamEvent] = []
        self.arrived = asyncio.Event()
        self.error: RedisError | None = None

    def deliver(self, events: list[StreamEvent]) -> None:
        fresh = [event for event in events if id_order(event.id) > id_order(self.position)]
        if fresh:
            self.pending.extend(fresh)
            self.position = fresh[-1].id
            self.arrived.set()

    def fail(self, error: RedisError) -> None:
        self.error = error
        self.arrived.set()


class _Hub:
    """Every stream read of one event loop (the stream role's uvicorn loop): one XREAD on
    one connection over all the streams being watched, fanned out to the readers, and a
    small pool for the short commands that readers borrow and give back.

    With a connection of its own per open stream, 1,000 clients were 1,000 Redis
    connections, each opened while its request started: on a CPU-starved stream process
    the loop did not get through a connect within its 2 s timeout and the request was a
    503. Here a stream costs no connection; the pool's connections are opened once and
    reused, and a command that finds them all busy waits (BlockingConnectionPool) rather
    than failing. When the last reader closes, the hub stops and closes its connections.
    """

    def __init__(self, url: str) -> None:
        self.commands = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=COMMAND_CONNECTIONS,
                timeout=POOL_WAIT_S,
                socket_connect_timeout=CONNECT_TIMEOUT_S,
                socket_timeout=COMMAND_TIMEOUT_S,
                client_name="sy-sse",
            )
        )
        self._reader = aioredis.Redis.from_url(
            url,
            max_connections=1,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=HUB_BLOCK_MS / 1000 + READ_MARGIN_S,
            client_name="sy-sse-hub",
        )
        self._watches: dict[str, set[_Watch]] = {}
        self._task: asyncio.Task[None] | None = None
        self.readers = 0

    def watch(self, key: str, after: str) -> _Watch:
        watch = _Watch(key, after)
        self._watches.setdefault(key, set()).add(watch)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sse-stream-hub")
        return watch

    def unwatch(self, watch: _Watch) -> None:
        watching = self._watches.get(watch.key)
        if watching is not None:
            watching.discard(watch)
            if not watching:
                del self._watches[watch.key]

    async def _run(self) -> None:
        while self._watches:
            # Per stream, from the reader furthest behind: the others skip what they have.
            streams: dict[Any, Any] = {
                key: min((watch.position for watch in watching), key=id_order)
                for key, watching in self._watches.items()
            }
            try:
                response = cast("list[Any]", await self._reader.xread(streams, block=HUB_BLOCK_MS, count=100))
            except Exception as exc:
                # Every reader ends its response (its client reconnects with Last-Event-ID);
                # the next watch starts the hub again.
                error = exc if isinstance(exc, RedisError) else RedisError(f"stream hub: {exc!r}")
                log.warning("sse_hub_read_failed", streams=len(streams), exc_info=True)
                for watching in list(self._watches.values()):
                    for watch in watching:
                        watch.fail(error)
                self._watches.clear()
                return
            for raw_key, entries in response:
                key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
                events = [_decode(raw_id, fields) for raw_id, fields in entries]
                for watch in list(self._watches.get(key, ())):
                    watch.deliver(events)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._task
        self._task = None
        with contextlib.suppress(RedisError, OSError):
            await self._reader.aclose()
        with contextlib.suppress(RedisError, OSError):
            await self.commands.aclose()
            await self.commands.connection_pool.disconnect()


# One hub per event loop and Redis URL (connections belong to the loop that opened them).
_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Hub]] = weakref.WeakKeyDictionary()


def _hub(url: str) -> _Hub:
    per_loop = _hubs.setdefault(asyncio.get_running_loop(), {})
    if url not in per_loop:
        per_loop[url] = _Hub(url)
    return per_loop[url]


class AsyncStreamReader:
    """Reads one task's stream from an event loop; holds a Redis connection only while a
    short command runs, never a DB one, and none while it waits (``_Hub``).

    A blocking read waits at most ``block_s`` (the heartbeat interval by default) and
    returns nothing when no event came. ``close`` must be awaited when done."""

    def __init__(self, task_id: UUID | str, *, block_s: float | None = None) -> None:
        self._key = stream_key(task_id)
        self._block_s = max(settings.SSE_HEARTBEAT_S if block_s is None else block_s, 0.001)
        self._url = settings.REDIS_URL
        self._hub: _Hub | None = None
        self._watch: _Watch | None = None

    @property
    def _client(self) -> aioredis.Redis:
        if self._hub is None:
            self._hub = _hub(self._url)
            self._hub.readers += 1
        return self._hub.commands

    async def last_id(self) -> str:
        entries = cast("list[Any]", await self._client.xrevrange(self._key, count=1))
        return _decode(entries[0][0], entries[0][1]).id if entries else "0-0"

    async def read(self, after: str, block_ms: int | None = None) -> list[StreamEvent]:
        """What follows ``after`` (the last id this reader returned, or the one it starts
        after), waiting up to ``block_ms`` (at most ``block_s``); nothing when none came."""
        block_s = self._block_s if block_ms is None else min(max(block_ms, 1) / 1000, self._block_s)
        if self._watch is None:
            self._client  # noqa: B018 -- joins the hub first (counted: close() stops it)
            assert self._hub is not None
            self._watch = self._hub.watch(self._key, after)
        watch = self._watch
        seen = id_order(after)
        watch.pending[:] = [event for event in watch.pending if id_order(event.id) > seen]
        if id_order(watch.position) < seen:
            watch.position = after
        if not watch.pending and watch.error is None:
            watch.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.arrived.wait(), block_s)
        if watch.error is not None:
            raise watch.error
        events, watch.pending[:] = watch.pending[:100], watch.pending[100:]
        return events

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
        hub, self._hub = self._hub, None
        if hub is None:
            return
        if self._watch is not None:
            hub.unwatch(self._watch)
            self._watch = None
        hub.readers -= 1
        if hub.readers == 0:  # nobody reads: stop the XREAD and close the connections
            per_loop = _hubs.get(asyncio.get_running_loop(), {})
            if per_loop.get(self._url) is hub:
                del per_loop[self._url]
            await hub.close()
