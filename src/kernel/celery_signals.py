"""Bind Celery task id/name (and the request id that dispatched it) to every log line,
and carry the current request id into the tasks a request dispatches."""

from __future__ import annotations

from typing import Any

from celery import signals

from kernel import context, db


@signals.before_task_publish.connect
def _add_request_id_header(headers: dict[str, Any] | None = None, **_: Any) -> None:
    request_id = context.current_request_id()
    if headers is not None and request_id and "request_id" not in headers:
        headers["request_id"] = request_id


@signals.task_prerun.connect
def _bind_task_context(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    context.clear()
    db.reset_primary_pin()  # read-your-writes is per task (kernel.db)
    request_id = getattr(task.request, "request_id", None) if task is not None else None
    context.bind(
        task_id=task_id,
        task_name=getattr(task, "name", None),
        request_id=request_id or context.new_request_id(),
    )


@signals.task_postrun.connect
def _clear_task_context(**_: Any) -> None:
    context.clear()


@signals.worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """The worker's own metrics port (WORKER_METRICS_PORT, set by bin/switchyard)."""
    from kernel import metrics

    metrics.serve_worker_metrics()
