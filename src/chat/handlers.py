"""Subscribers to other contexts' domain events (registered in ``apps.py``)."""

from __future__ import annotations

from chat import services
from contracts.events import AITaskFinished, DomainEvent


def on_ai_task_finished(event: DomainEvent) -> None:
    """Close the turn of a finished task (idempotent: a closed turn is left alone)."""
    if isinstance(event, AITaskFinished):
        services.turn_finished(organization_id=event.organization_id, task_id=event.task_id)
