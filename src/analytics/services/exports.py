"""CSV exports of an organization's outcomes: requested from the API, written by a
Celery task on ``low`` into the ``analytics_exports`` storage, removed after a TTL.

Memory stays flat however many rows: rows stream from a server-side cursor
(``iterator(chunk_size=…)``) into a temporary file on disk, which the storage then
copies in chunks. Behind PgBouncer (``DISABLE_SERVER_SIDE_CURSORS``) a plain cursor
would pull the whole result into the client, so rows come by keyset pages instead.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import IO, Any
from uuid import UUID

import structlog
from celery import current_app
from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from analytics.models import Export, TaskOutcome
from contracts.analytics import ExportInfo
from kernel.errors import ConflictError, NotFoundError

log = structlog.get_logger(__name__)

EXPORT_TASK = "analytics.export_csv"
COLUMNS = (
    "occurred_at",
    "event_id",
    "task_id",
    "status",
    "model",
    "priority",
    "cached",
    "attempts",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "error_code",
    "duration_seconds",
    "completed_at",
)
# A running export not finished after this long is taken to have lost its worker.
STALE_RUNNING = timedelta(hours=1)
REDISPATCH_AFTER = timedelta(minutes=1)


class ExportNotFound(NotFoundError):
    code = "export_not_found"
    default_detail = "No such export."


class ExportNotReady(ConflictError):
    code = "export_not_ready"
    default_detail = "The export has no file (yet)."


def export_storage() -> Storage:
    return storages["analytics_exports"]


def _to_info(row: Export) -> ExportInfo:
    return ExportInfo(
        id=row.id,
        organization_id=row.organization_id,
        start=row.start,
        end=row.end,
        status=row.status,
        row_count=row.row_count,
        error=row.error,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


def export_request(*, organization_id: UUID, start: datetime, end: datetime) -> ExportInfo:
    """Record an export of ``[start, end)`` and queue it on ``low`` after commit."""
    with transaction.atomic():
        row = Export.objects.create(organization_id=organization_id, start=start, end=end)
        transaction.on_commit(lambda: _dispatch(row.id))
    return _to_info(row)


def _dispatch(export_id: UUID) -> None:
    try:
        current_app.send_task(EXPORT_TASK, args=[str(export_id)], queue="low")
    except Exception:  # broker down: exports_cleanup (beat) sends it again
        log.warning("analytics_export_dispatch_failed", export_id=str(export_id), exc_info=True)


def export_get(*, organization_id: UUID, export_id: UUID) -> ExportInfo:
    row = Export.objects.filter(organization_id=organization_id, id=export_id).first()
    if row is None:
        raise ExportNotFound()
    return _to_info(row)


def export_open(*, organization_id: UUID, export_id: UUID) -> tuple[IO[bytes], str]:
    """The finished export's file (binary, the caller closes it) and a download name."""
    row = Export.objects.filter(organization_id=organization_id, id=export_id).first()
    if row is None:
        raise ExportNotFound()
    if row.status != Export.Status.DONE or not row.file_name:
        raise ExportNotReady()
    try:
        handle = export_storage().open(row.file_name, "rb")
    except FileNotFoundError:  # removed from the storage behind our back
        raise ExportNotFound("The export's file is gone; request a new export.") from None
    return handle, f"outcomes-{row.start:%Y%m%d}-{row.end:%Y%m%d}.csv"


def export_run(*, export_id: UUID) -> ExportInfo | None:
    """Write the export's CSV; None when another worker has it or it is finished (a
    duplicate delivery). A failure marks the export failed (the user asks again)."""
    now = timezone.now()
    claimed = Export.objects.filter(
        Q(status=Export.Status.PENDING) | Q(status=Export.Status.RUNNING, started_at__lt=now - STALE_RUNNING),
        id=export_id,
    ).update(status=Export.Status.RUNNING, started_at=now)
    if not claimed:
        return None
    row = Export.objects.get(id=export_id)
    try:
        name, count = _write(row)
    except Exception as exc:
        log.exception("analytics_export_failed", export_id=str(export_id))
        Export.objects.filter(id=export_id).update(
            status=Export.Status.FAILED, error=type(exc).__name__[:255], finished_at=timezone.now()
        )
    else:
        Export.objects.filter(id=export_id).update(
            status=Export.Status.DONE, file_name=name, row_count=count, finished_at=timezone.now()
        )
    return _to_info(Export.objects.get(id=export_id))


def _write(row: Export) -> tuple[str, int]:
    count = 0
    with tempfile.TemporaryFile(mode="w+b") as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(COLUMNS)
        for values in export_rows(organization_id=row.organization_id, start=row.start, end=row.end):
            writer.writerow(_csv_value(v) for v in values)
            count += 1
        text.flush()
        raw.seek(0)
        name = export_storage().save(f"exports/{row.organization_id}/{row.id}.csv", File(raw))
        text.detach()
    return name, count


def _csv_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def export_rows(*, organization_id: UUID, start: datetime, end: datetime) -> Iterator[tuple[Any, ...]]:
    """The outcomes of ``[start, end)`` in time order, streamed in chunks."""
    chunk = settings.ANALYTICS_EXPORT_CHUNK_ROWS
    outcomes = TaskOutcome.objects.filter(organization_id=organization_id, occurred_at__gte=start, occurred_at__lt=end)
    if not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
        # Inside a transaction the cursor is WITHOUT HOLD: nothing materialised server-side.
        with transaction.atomic():
            yield from outcomes.order_by("occurred_at", "id").values_list(*COLUMNS).iterator(chunk_size=chunk)
        return
    after: tuple[datetime, int] | None = None
    while True:
        page = outcomes
        if after is not None:
            page = page.filter(Q(occurred_at__gt=after[0]) | Q(occurred_at=after[0], id__gt=after[1]))
        rows = list(page.order_by("occurred_at", "id").values_list("id", *COLUMNS)[:chunk])
        for values in rows:
            yield values[1:]
        if len(rows) < chunk:
            return
        after = (rows[-1][1], rows[-1][0])


def exports_cleanup(*, older_than: timedelta | None = None) -> int:
    """Remove exports (rows and files) created longer ago than the TTL; send again the
    pending ones whose dispatch was lost (broker down). Returns how many were removed."""
    older_than = older_than or timedelta(seconds=settings.ANALYTICS_EXPORT_TTL_S)
    now = timezone.now()
    removed = 0
    storage = export_storage()
    for row in Export.objects.filter(created_at__lt=now - older_than).order_by("created_at")[:500]:
        if row.file_name:
            storage.delete(row.file_name)
        row.delete()
        removed += 1
    stuck = Export.objects.filter(status=Export.Status.PENDING, created_at__lt=now - REDISPATCH_AFTER)
    for export_id in stuck.values_list("id", flat=True)[:100]:
        _dispatch(export_id)
    return removed
