"""Domain events: what one context tells the others, through the transactional outbox.

Every event has a stable ``event_type`` and a unique ``event_id`` so handlers can be
idempotent. Add fields, never rename or remove them (consumers may lag a release):
events ignore fields they do not know, so a consumer one release behind still reads
an event a newer producer wrote. Service inputs stay strict (``Contract``).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import ClassVar
from uuid import UUID, uuid4

from pydantic import ConfigDict, Field

from contracts.base import Contract


class DomainEvent(Contract):
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: ClassVar[str]
    event_id: UUID = Field(default_factory=uuid4)
    occurred_at: datetime


class AITaskFinished(DomainEvent):
    """An AI task reached a terminal state (done, failed or cancelled)."""

    event_type: ClassVar[str] = "llm.ai_task.finished"

    task_id: UUID
    organization_id: UUID
    api_key_id: UUID | None
    status: str
    model: str
    priority: str
    cached: bool
    attempts: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    error_code: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime
    duration_seconds: float | None


EVENT_TYPES: dict[str, type[DomainEvent]] = {AITaskFinished.event_type: AITaskFinished}
