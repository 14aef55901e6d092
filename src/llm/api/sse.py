"""``GET /api/v1/ai-tasks/{id}/events/``: Server-Sent Events for one task.

An async view: it authenticates and reads the task in a worker thread, closes that
thread's database connection, then waits on the task's Redis stream in the event loop —
an open stream holds no database connection and no thread. Served by the ``stream``
role (ASGI); under WSGI it still answers, but buffers until the task ends.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponseBase, JsonResponse, StreamingHttpResponse

from contracts.llm import TERMINAL_STATUSES
from kernel.errors import error_body, error_response
from llm import services
from llm.streams import AsyncStreamReader, StreamEvent
from users import services as users

_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
MAX_STREAM_SECONDS = 3600


def _load_snapshot(raw_key: str, task_id: UUID) -> dict[str, Any]:
    try:
        principal = users.api_key_authenticate(raw_key=raw_key)
        return services.status_payload(services.task_get(organization_id=principal.organization_id, task_id=task_id))
    finally:
        connection.close()  # nothing below this line may hold a database connection


def _frame(event: StreamEvent) -> bytes:
    return f"id: {event.id}\nevent: {event.event}\ndata: {json.dumps(event.data)}\n\n".encode()


async def _stream(reader: AsyncStreamReader, snapshot: dict[str, Any] | None, cursor: str) -> AsyncIterator[bytes]:
    try:
        yield b"retry: 2000\n\n"
        if snapshot is not None:
            yield _frame(StreamEvent(id=cursor, event="status", data=snapshot))
            if snapshot["status"] in TERMINAL_STATUSES:
                return
        deadline = time.monotonic() + MAX_STREAM_SECONDS
        while time.monotonic() < deadline:
            events = await reader.read(cursor, block_ms=int(settings.SSE_HEARTBEAT_S * 1000))
            if not events:
                yield b": heartbeat\n\n"
                continue
            for event in events:
                cursor = event.id
                yield _frame(event)
                if event.event == "status" and event.data.get("status") in TERMINAL_STATUSES:
                    return
    finally:
        await reader.close()


async def task_events(request: HttpRequest, task_id: UUID) -> HttpResponseBase:
    scheme, _, raw_key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not raw_key.strip():
        return JsonResponse(
            error_body(
                status_code=401, code="not_authenticated", detail="Authentication credentials were not provided."
            ),
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="api"'},
        )
    try:  # before any stream work: address (failed logins), key and organization limits
        await users.stream_throttle(meta=request.META, raw_key=raw_key.strip())
    except (users.RateLimited, users.InvalidApiKey) as exc:
        return error_response(exc)
    reader = AsyncStreamReader(task_id)
    try:
        # The stream position is taken before the snapshot, so nothing falls between them.
        last_id = await reader.last_id()
        snapshot = await sync_to_async(_load_snapshot, thread_sensitive=False)(raw_key.strip(), task_id)
    except users.InvalidApiKey as exc:
        await reader.close()
        return JsonResponse(error_body(status_code=401, code=exc.code, detail=exc.detail), status=401)
    except services.TaskNotFound as exc:
        await reader.close()
        return JsonResponse(error_body(status_code=404, code=exc.code, detail=exc.detail), status=404)
    except Exception:
        await reader.close()
        raise
    resume_from = request.headers.get("Last-Event-ID", "")
    if _EVENT_ID.match(resume_from) and await reader.exists():
        body = _stream(reader, None, resume_from)
    else:
        body = _stream(reader, snapshot, last_id)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
