"""Subscribers to other contexts' domain events (registered in ``apps.py``)."""

from __future__ import annotations

from analytics import services
from contracts.events import AITaskFinished, DomainEvent


def on_ai_task_finished(event: DomainEvent) -> None:
    if isinstance(event, AITaskFinished):
        services.task_outcome_record(event)
