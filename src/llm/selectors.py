"""Reads of AI tasks, always scoped to one organization."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import datetime
from uuid import UUID

from django.db.models import BooleanField, Q, QuerySet
from django.db.models.expressions import RawSQL

from kernel.db import replica_reads
from kernel.errors import DomainError
from kernel.shadow import ShadowRead
from llm.models import AITask


class InvalidCursor(DomainError):
    code = "invalid_cursor"
    default_detail = "The cursor is not valid."


# A task's input, possibly large (a conversation turn carries the whole transcript): lists
# and batch reads never load it (``services.mapping.to_summary`` does not read it).
INPUT_FIELDS = ("prompt", "messages")


def task_queryset(*, organization_id: UUID) -> QuerySet[AITask]:
    return AITask.objects.filter(organization_id=organization_id)


def task_find(*, organization_id: UUID, task_id: UUID) -> AITask | None:
    return task_queryset(organization_id=organization_id).defer("messages").filter(id=task_id).first()


def task_many(*, organization_id: UUID, task_ids: list[UUID]) -> QuerySet[AITask]:
    """The organization's tasks among ``task_ids``, without their input."""
    return task_queryset(organization_id=organization_id).defer(*INPUT_FIELDS).filter(id__in=task_ids)


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
    """Newest first, keyset-paginated on (created_at, id): one query whatever the page.

    Shadow read (kernel.shadow): the row-value keyset ``(created_at, id) < (...)``, which
    PostgreSQL matches to the (organization, -created_at, -id) index as one range, runs
    beside the OR form for a sample of calls until it has proven to return the same pages.
    """
    after = decode_cursor(cursor) if cursor else None

    def page(keyset: Callable[[QuerySet[AITask], datetime, UUID], QuerySet[AITask]]) -> Callable[[], _Page]:
        return lambda: _task_page(
            organization_id=organization_id, status=status, after=after, limit=limit, keyset=keyset
        )

    return TASK_PAGE_SHADOW.run(page(_keyset_or), page(_keyset_row))


_Page = tuple[list[AITask], str | None]


def _page_key(page: _Page) -> dict[str, object]:
    rows, next_cursor = page
    return {"ids": [str(task.id) for task in rows], "next": next_cursor}


TASK_PAGE_SHADOW: ShadowRead[_Page] = ShadowRead("llm.task_page", key=_page_key)


def _keyset_or(tasks: QuerySet[AITask], created_at: datetime, task_id: UUID) -> QuerySet[AITask]:
    return tasks.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=task_id))


def _keyset_row(tasks: QuerySet[AITask], created_at: datetime, task_id: UUID) -> QuerySet[AITask]:
    return tasks.filter(
        RawSQL(
            '("llm_aitask"."created_at", "llm_aitask"."id") < (%s, %s)',
            (created_at, task_id),
            output_field=BooleanField(),
        )
    )


def _task_page(
    *,
    organization_id: UUID,
    status: str | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
    keyset: Callable[[QuerySet[AITask], datetime, UUID], QuerySet[AITask]],
) -> _Page:
    tasks = task_queryset(organization_id=organization_id).defer(*INPUT_FIELDS)
    if status:
        tasks = tasks.filter(status=status)
    if after is not None:
        tasks = keyset(tasks, *after)
    rows = list(tasks.order_by("-created_at", "-id")[: limit + 1])
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor
