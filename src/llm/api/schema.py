"""OpenAPI for the SSE endpoint, which is a plain async Django view (DRF views are
synchronous), so drf-spectacular cannot discover it by itself."""

from __future__ import annotations

from typing import Any

EVENTS_PATH = "/api/v1/ai-tasks/{task_id}/events/"
_EVENTS_DESCRIPTION = (
    "Server-Sent Events for one task, served by the `stream` role (ASGI) only; the `web` role "
    "answers 421 `use_stream_role`. Every event has an `id`; reconnect with `Last-Event-ID` to receive "
    "only what was missed.\n\n"
    "- `event: status`: the task's state (`status`, `attempts`, `result`, `error`, tokens, `cost_usd`) at "
    "once, then every transition; the stream ends after a terminal state.\n"
    '- `event: attempt`, `{"attempt": n}`: attempt `n` of the task starts. Discard the text built from the '
    "deltas received so far: they belong to an attempt that failed.\n"
    '- `event: delta`, `{"text": "...", "attempt": n}`: the next chunk of the answer while the provider '
    "streams.\n"
    "- a `: heartbeat` comment after 15 s without an event.\n\n"
    "Once the task has ended, a connection without `Last-Event-ID` gets the final `status` once and the "
    "response ends; a reconnect from before the end gets the rest up to the final `status`; a reconnect "
    "at or after the final event gets 204 (EventSource then stops reconnecting)."
)


def add_event_stream_path(result: dict[str, Any], **_: Any) -> dict[str, Any]:
    error = (
        {"$ref": "#/components/schemas/ErrorResponse"}
        if "ErrorResponse" in result.get("components", {}).get("schemas", {})
        else {"type": "object"}
    )
    result.setdefault("paths", {})[EVENTS_PATH] = {
        "get": {
            "operationId": "ai_tasks_events",
            "summary": "Stream a task's events (SSE)",
            "description": _EVENTS_DESCRIPTION,
            "tags": ["ai-tasks"],
            "security": [{"ApiKey": []}],
            "parameters": [
                {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string", "format": "uuid"}},
                {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}},
            ],
            "responses": {
                "200": {
                    "description": "An event stream.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "204": {"description": "The task has ended and `Last-Event-ID` is at or after its final event."},
                "401": {"description": "No or invalid API key.", "content": {"application/json": {"schema": error}}},
                "404": {
                    "description": "No such task in the caller's organization.",
                    "content": {"application/json": {"schema": error}},
                },
                "421": {
                    "description": "Sent to the `web` role (WSGI): events are served by the `stream` role.",
                    "content": {"application/json": {"schema": error}},
                },
                "503": {
                    "description": "The event stream (Redis) is unavailable; retry after `Retry-After` seconds.",
                    "content": {"application/json": {"schema": error}},
                },
            },
        }
    }
    return result
