"""The one place an ``AITask`` row becomes the ``contracts.llm.AITask`` every caller sees."""

from __future__ import annotations

from typing import Any

from contracts.llm import AITask as AITaskContract
from contracts.llm import AITaskSummary
from llm.models import AITask


def duration_seconds(task: AITask) -> float | None:
    if task.started_at is None or task.completed_at is None:
        return None
    return round((task.completed_at - task.started_at).total_seconds(), 3)


def to_task(task: AITask) -> AITaskContract:
    return AITaskContract(prompt=task.prompt, **_summary_fields(task))


def to_summary(task: AITask) -> AITaskSummary:
    """The task without its input: reads none of ``selectors.INPUT_FIELDS`` (which list
    reads defer), so a page costs no query per row."""
    return AITaskSummary(**_summary_fields(task))


def _summary_fields(task: AITask) -> dict[str, Any]:
    return {
        "id": task.id,
        "organization_id": task.organization_id,
        "status": task.status,
        "priority": task.priority,
        "model": task.model,
        "max_tokens": task.max_tokens,
        "result": task.result,
        "error": task.error,
        "error_code": task.error_code,
        "cached": task.cached,
        "input_tokens": task.input_tokens,
        "output_tokens": task.output_tokens,
        "cost_usd": task.cost_usd,
        "attempts": task.attempts,
        "created_at": task.created_at,
        "started_at": task.started_at,
        "completed_at": task.completed_at,
        "duration_seconds": duration_seconds(task),
        "metadata": task.metadata,
        "callback_url": task.callback_url,
        "served_model": task.served_model,
    }
