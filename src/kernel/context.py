"""The request id and who is calling, shared between web requests and the Celery
tasks they dispatch (it travels in a message header)."""

from __future__ import annotations

import re
import uuid

import structlog

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def new_request_id(incoming: str | None = None) -> str:
    """Honour a well-formed incoming id; otherwise mint one. Garbage is never echoed."""
    if incoming and _VALID_REQUEST_ID.fullmatch(incoming):  # match() lets a trailing newline in
        return incoming
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else None


def bind(**values: object) -> None:
    structlog.contextvars.bind_contextvars(**values)


def clear() -> None:
    structlog.contextvars.clear_contextvars()
