"""Reads of the chat context. Querysets are built here and never leave the context:
public reads go through ``chat.services`` and return contracts models.

Lists load no transcript: conversations come with ``.only()`` of their summary columns
(never ``system_prompt``), and no list touches turns.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from uuid import UUID

from django.db.models import Model, Q, QuerySet

from chat.models import Assistant, Conversation, Turn
from kernel.errors import DomainError

SUMMARY_FIELDS = (
    "id",
    "organization_id",
    "assistant_id",
    "title",
    "model",
    "fallback_models",
    "priority",
    "context_token_budget",
    "turn_count",
    "active_turn_id",
    "metadata",
    "created_at",
    "updated_at",
)


class InvalidCursor(DomainError):
    code = "invalid_cursor"
    default_detail = "The cursor is not valid."


def _encode(row: Model) -> str:
    created_at: datetime = row.created_at  # type: ignore[attr-defined]
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row.pk}".encode()).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, row_id = raw.split("|")
        return datetime.fromisoformat(created), UUID(row_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidCursor() from exc


def _page[M: (Assistant, Conversation)](
    rows: QuerySet[M], *, cursor: str | None, limit: int
) -> tuple[list[M], str | None]:
    """Newest first, keyset-paginated on (created_at, id): one query whatever the page."""
    if cursor:
        created_at, row_id = _decode(cursor)
        rows = rows.filter(Q(created_at__lt=created_at) | Q(created_at=created_at, id__lt=row_id))
    page = list(rows.order_by("-created_at", "-id")[: limit + 1])
    next_cursor = _encode(page[limit - 1]) if len(page) > limit else None
    return page[:limit], next_cursor


def assistant_queryset(*, organization_id: UUID) -> QuerySet[Assistant]:
    return Assistant.objects.filter(organization_id=organization_id)


def assistant_find(*, organization_id: UUID, assistant_id: UUID) -> Assistant | None:
    return assistant_queryset(organization_id=organization_id).filter(id=assistant_id).first()


def assistant_exists(*, organization_id: UUID, assistant_id: UUID) -> bool:
    return assistant_queryset(organization_id=organization_id).filter(id=assistant_id).exists()


def assistant_page(*, organization_id: UUID, cursor: str | None, limit: int) -> tuple[list[Assistant], str | None]:
    return _page(assistant_queryset(organization_id=organization_id), cursor=cursor, limit=limit)


def conversation_queryset(*, organization_id: UUID) -> QuerySet[Conversation]:
    return Conversation.objects.filter(organization_id=organization_id)


def conversation_find(*, organization_id: UUID, conversation_id: UUID) -> Conversation | None:
    return conversation_queryset(organization_id=organization_id).filter(id=conversation_id).first()


def recent_conversations(*, assistant_id: UUID) -> QuerySet[Conversation]:
    """The hot query: an assistant's conversations, newest first (index
    ``conversation_assistant_recent``), summary columns only."""
    return Conversation.objects.filter(assistant_id=assistant_id).only(*SUMMARY_FIELDS).order_by("-created_at", "-id")


def conversation_page(
    *, organization_id: UUID, assistant_id: UUID | None, cursor: str | None, limit: int
) -> tuple[list[Conversation], str | None]:
    rows = conversation_queryset(organization_id=organization_id).only(*SUMMARY_FIELDS)
    if assistant_id is not None:
        rows = rows.filter(assistant_id=assistant_id)
    return _page(rows, cursor=cursor, limit=limit)


def turns_in_order(*, conversation_id: UUID) -> QuerySet[Turn]:
    """A conversation's turns in order (index ``turn_conversation_created``)."""
    return Turn.objects.filter(conversation_id=conversation_id).order_by("created_at", "id")


def answered_turns_newest_first(*, conversation_id: UUID, limit: int) -> list[tuple[str, str]]:
    """(user content, reply) of the newest ``limit`` answered turns, newest first."""
    rows = (
        Turn.objects.filter(conversation_id=conversation_id, status=Turn.Status.DONE)
        .order_by("-created_at", "-id")
        .values_list("content", "reply")[:limit]
    )
    return [(content, reply or "") for content, reply in rows]
