"""OpenAPI for the SSE endpoint, which is a plain async Django view (DRF views are
synchronous), so drf-spectacular cannot discover it by itself."""

from __future__ import annotations

from typing import Any

EVENTS_PATH = "/api/v1/ai-tasks/{task_id}/events/"
_EVENTS_DESCRIPTION = (
    "Server-Sent Events for one task: `event: status` with the current state at once, every later "
    "transition, `event: delta` chunks while the provider streams, a comment heartbeat every 15 s; "
    "the stream ends after a terminal state. Reconnect with `Last-Event-ID` to receive only what was "
    "missed. Served by the `stream` role."
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
                "401": {"description": "No or invalid API key.", "content": {"application/json": {"schema": error}}},
                "404": {
                    "description": "No such task in the caller's organization.",
                    "content": {"application/json": {"schema": error}},
                },
            },
        }
    }
    return result
