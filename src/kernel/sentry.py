"""Sentry, on when ``SENTRY_DSN`` is set (settings call ``init`` in every role: web,
stream, workers, beat). Every event carries the request id and, in a worker, the task
id and name as tags, read from the log context (kernel.context), so an event and its
log lines are found by the same id. No personal data is sent (the SDK's default);
the environment and release come from SENTRY_ENVIRONMENT and SENTRY_RELEASE."""

from __future__ import annotations

from typing import Any

import structlog

TAGGED = ("request_id", "task_id", "task_name")


def tag_event(event: dict[str, Any], hint: dict[str, Any] | None = None) -> dict[str, Any]:
    """``before_send``: the ids of the current request or task as tags."""
    bound = structlog.contextvars.get_contextvars()
    tags = event.setdefault("tags", {})
    for name in TAGGED:
        value = bound.get(name)
        if value and name not in tags:
            tags[name] = str(value)
    return event


def init(*, dsn: str, environment: str, release: str | None, traces_sample_rate: float) -> bool:
    if not dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release or None,
        traces_sample_rate=traces_sample_rate,
        before_send=tag_event,  # type: ignore[arg-type]
        integrations=[DjangoIntegration(), CeleryIntegration(monitor_beat_tasks=False)],
    )
    return True
