"""``GET /api/v1/ai-tasks/{id}/events/``: Server-Sent Events for one task.

An async view: it authenticates and reads the task in a worker thread, closes that
thread's database connection, then waits on the task's Redis stream in the event loop —
an open stream holds no database connection, no Redis connection (the process's one
blocking XREAD covers every open stream, ``llm.streams.AsyncStreamReader``) and no
thread of its own (Django's handler keeps one idle per request, docs/benchmarks.md). Served by the ``stream``
role (ASGI) only: the ``web`` role (WSGI) answers 421 naming the stream role at once,
since a WSGI worker thread would be held for as long as the stream lasts.

Events (each with an ``id:``; reconnect with ``Last-Event-ID`` to get only what followed):

- ``status``: the task's state (``status``, ``attempts``, ``result``, tokens, cost) at once,
  then at every transition; the stream ends after a terminal one.
- ``attempt``: ``{"attempt": n}``: attempt ``n`` starts; discard the text built from the
  deltas received so far (they belong to an attempt that failed).
- ``delta``: ``{"text": "...", "attempt": n}``: the next chunk of the answer.
- a ``: heartbeat`` comment after SSE_HEARTBEAT_S (15 s) without an event.

Once the task has ended, a connection gets what it has not seen yet and then the end: a
fresh one the final ``status`` once, a reconnect from before the end the rest up to the
final ``status``, a reconnect at or after it HTTP 204 (EventSource stops reconnecting).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt
from redis.exceptions import RedisError

from contracts.llm import TERMINAL_STATUSES
from kernel.errors import DomainError, error_response
from llm import services
from llm.streams import AsyncStreamReader, StreamEvent, id_order, is_terminal, last_event_id
from users import services as users

log = structlog.get_logger(__name__)
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
MAX_STREAM_SECONDS = 3600
WRONG_ROLE_DETAIL = (
    "Server-Sent Events are served by the `stream` role (ASGI: `bin/switchyard stream`; "
    "port 8100 with docker compose and `make run`), not by the `web` role. "
    "Send this request to the stream server."
)


class WrongRole(DomainError):
    status_code = 421
    code = "use_stream_role"
    default_detail = WRONG_ROLE_DETAIL


class MethodNotAllowed(DomainError):
    status_code = 405
    code = "method_not_allowed"
    headers = {"Allow": "GET, HEAD"}


class StreamUnavailable(DomainError):
    status_code = 503
    code = "stream_unavailable"
    default_detail = "The event stream is unavailable; retry shortly."

    def __init__(self) -> None:
        super().__init__(retry_after=5)


@dataclass(frozen=True, slots=True)
class _Opened:
    last_id: str  # the stream's position, taken before the snapshot: nothing falls between
    snapshot: dict[str, Any]


def _open(authorization: str, meta: Mapping[str, Any], task_id: UUID, method: str) -> _Opened:
    """Everything an open needs before it streams, in one worker thread (one executor hop,
    one pooled connection, closed here): the address's failed logins, the key, the key's
    and the organization's request limits (``users.stream_authorize``), then the stream's
    position and the task's state. Two hops queued on the loop's default executor (6
    threads on 2 cores) when 100 clients a second opened (docs/benchmarks.md)."""
    try:
        principal = users.stream_authorize(authorization=authorization, meta=meta)
        if method not in ("GET", "HEAD"):  # after authentication, like the DRF views
            raise MethodNotAllowed(f'Method "{method}" not allowed.')
        last_id = last_event_id(task_id)
        task = services.task_get(organization_id=principal.organization_id, task_id=task_id)
        return _Opened(last_id=last_id, snapshot=services.status_payload(task))
    finally:
        connection.close()  # nothing below this line may hold a database connection


def _frame(event: StreamEvent) -> bytes:
    return f"id: {event.id}\nevent: {event.event}\ndata: {json.dumps(event.data)}\n\n".encode()


def _event_stream(body: AsyncIterator[bytes] | bytes) -> HttpResponseBase:
    response: HttpResponseBase = (
        HttpResponse(body, content_type="text/event-stream")
        if isinstance(body, bytes)
        else StreamingHttpResponse(body, content_type="text/event-stream")
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


async def _stream(reader: AsyncStreamReader, snapshot: dict[str, Any] | None, cursor: str) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 2000\n\n"
        if snapshot is not None:
            yield _frame(StreamEvent(id=cursor, event="status", data=snapshot))
        deadline = time.monotonic() + MAX_STREAM_SECONDS
        while time.monotonic() < deadline:
            try:
                events = await reader.read(cursor)
            except RedisError:  # the client reconnects with Last-Event-ID and misses nothing
                log.warning("sse_read_failed", exc_info=True)
                return
            if not events:
                yield b": heartbeat\n\n"
                continue
            for event in events:
                cursor = event.id
                yield _frame(event)
                if is_terminal(event):
                    return
    finally:
        await reader.close()


async def _ended(reader: AsyncStreamReader, snapshot: dict[str, Any], resume_from: str | None) -> HttpResponseBase:
    """The task has ended: answer what the client has not seen yet, complete, or 204.

    The end is the stream's terminal ``status`` event. When the stream has none (it
    expired, or the worker's publish is still in flight or was lost) the final state read
    from the database is appended, so every reconnect after this one names an id at or
    after the end and gets 204 instead of the final status again."""
    final_id = await reader.terminal_id() or await reader.append("status", snapshot)
    if resume_from is None:
        events = [StreamEvent(id=final_id, event="status", data=snapshot)]
    elif id_order(resume_from) >= id_order(final_id):
        return HttpResponse(status=204)
    else:
        events = await reader.between(resume_from, final_id)
        if not events or not is_terminal(events[-1]):
            events.append(StreamEvent(id=final_id, event="status", data=snapshot))
    return _event_stream(b"retry: 2000\n\n" + b"".join(_frame(event) for event in events))


@csrf_exempt  # Bearer keys, no cookies: CSRF does not apply; other methods get a JSON 405 below
async def task_events(request: HttpRequest, task_id: UUID) -> HttpResponseBase:
    try:
        return await _task_events(request, task_id)
    except DomainError as exc:  # the API's one error shape (kernel.errors), as in DRF views
        return error_response(exc)


async def _task_events(request: HttpRequest, task_id: UUID) -> HttpResponseBase:
    if not isinstance(request, ASGIRequest):  # WSGI: this would hold a worker thread
        raise WrongRole()
    reader = AsyncStreamReader(task_id)
    handed_over = False
    try:
        # Before any stream work: the address's failed logins, the key, the key's and the
        # organization's request limits (the same path as every DRF view); then the
        # stream's position and the snapshot. One hop (_open).
        opened = await sync_to_async(_open, thread_sensitive=False)(
            request.headers.get("Authorization", ""), request.META, task_id, request.method or ""
        )
        last_id, snapshot = opened.last_id, opened.snapshot
        resume_from = request.headers.get("Last-Event-ID", "").strip()
        resume = resume_from if _EVENT_ID.match(resume_from) else None
        if snapshot["status"] in TERMINAL_STATUSES:
            return await _ended(reader, snapshot, resume)
        if resume is not None and await reader.exists():
            body = _stream(reader, None, resume)
        else:
            body = _stream(reader, snapshot, last_id)
        handed_over = True  # from here the stream's generator closes the reader
        return _event_stream(body)
    except RedisError as exc:
        log.warning("sse_redis_unavailable", task_id=str(task_id), exc_info=True)
        raise StreamUnavailable() from exc
    finally:
        if not handed_over:
            await reader.close()
