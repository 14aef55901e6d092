"""Reads of AI tasks, always scoped to one organization."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from uuid import UUID

from django.db.models import Q, QuerySet

from kernel.db import replica_reads
from kernel.errors import DomainError
from llm.models import AITask


class InvalidCursor(DomainError):
    code = "invalid_cursor"
    default_detail = "The cursor is not valid."


def task_queryset(*, organization_id: UUID) -> QuerySet[AITask]:
    return AITask.objects.filter(organization_id=organization_id)


def task_find(*, organization_id: UUID, task_id: UUID) -> AITask | None:
    return task_queryset(organization_id=organization_id).filter(id=task_id).first()


def encode_cursor(task: AITask) -> str:
    return base64.urlsafe_b64encode(f"{task.created_at.isoformat()}|{task.id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, task_id = raw.split("|")
        return datetime.fromisoformat(created), UUID(task_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor() from exc


@replica_reads  # a list may lag the primary by the replica's delay (docs/decisions/read-replicas.md)
def task_page(
    *, organization_id: UUID, status: str | None, cursor: str | None, limit: int
) -> tuple[list[AITask], str | None]:
    """Newest first, keyset-paginated on (created_at, id): one query whatever the page."""
    tasks = task_queryset(organization_id=organization_id)
    if status:
        tasks = tasks.filter(status=status)
    if cursor:
        created_at, task_id = decode_cursor(cursor)
        tasks = tasks.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=task_id))
    rows = list(tasks.order_by("-created_at", "-id")[: limit + 1])
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor
