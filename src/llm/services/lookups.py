"""Reading several AI tasks at once (the chat context reads the tasks of its turns)."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from contracts.llm import AITask as AITaskContract
from llm import selectors
from llm.services._common import to_task


def tasks_get_many(*, organization_id: UUID, task_ids: Iterable[UUID]) -> dict[UUID, AITaskContract]:
    """The organization's tasks among ``task_ids``, by id, in one query (unknown ids are absent)."""
    ids = list(task_ids)
    if not ids:
        return {}
    rows = selectors.task_queryset(organization_id=organization_id).filter(id__in=ids)
    return {row.id: to_task(row) for row in rows}
