"""Task outcomes recorded from llm's domain events: idempotent, scoped, summed in SQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from analytics import services
from analytics.handlers import on_ai_task_finished
from analytics.models import TaskOutcome
from contracts.events import AITaskFinished
from kernel import services as kernel

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)


def finished(org: uuid.UUID, status: str = "done", cost: str = "0.01", tokens: int = 10) -> AITaskFinished:
    return AITaskFinished(
        occurred_at=NOW,
        task_id=uuid.uuid4(),
        organization_id=org,
        api_key_id=None,
        status=status,
        model="fake-small",
        priority="normal",
        cached=False,
        attempts=1,
        input_tokens=tokens,
        output_tokens=2 * tokens,
        cost_usd=Decimal(cost),
        error_code=None if status == "done" else "timeout",
        created_at=NOW,
        started_at=NOW,
        completed_at=NOW,
        duration_seconds=1.5,
    )


def test_analytics_subscribes_to_task_finished() -> None:
    assert "analytics.handlers.on_ai_task_finished" in kernel.event_subscribers(AITaskFinished.event_type)


def test_redelivered_event_is_recorded_once() -> None:
    event = finished(uuid.uuid4())
    assert services.task_outcome_record(event) is True
    on_ai_task_finished(event)  # at-least-once delivery: the same event again
    assert TaskOutcome.objects.count() == 1


def test_totals_are_per_organization_and_period() -> None:
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    for event in (
        finished(mine),
        finished(mine, cost="0.02", tokens=5),
        finished(mine, status="failed", cost="0"),
        finished(theirs, cost="9"),
    ):
        services.task_outcome_record(event)
    totals = services.outcome_totals(organization_id=mine, start=NOW - timedelta(days=1), end=NOW + timedelta(days=1))
    assert totals.by_status == {"done": 2, "failed": 1}
    assert (totals.input_tokens, totals.output_tokens) == (25, 50)
    assert totals.cost_usd == Decimal("0.03")
    empty = services.outcome_totals(organization_id=mine, start=NOW + timedelta(days=1), end=NOW + timedelta(days=2))
    assert empty.by_status == {} and empty.cost_usd == 0
