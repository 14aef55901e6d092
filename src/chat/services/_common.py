"""Private helpers of the chat services: the mappers (the one place where a row becomes
a contract object) and the domain errors."""

from __future__ import annotations

from chat.models import Assistant, Conversation, Turn
from contracts.chat import Assistant as AssistantContract
from contracts.chat import Conversation as ConversationContract
from contracts.chat import ConversationSummary
from contracts.chat import Turn as TurnContract
from kernel.errors import ConflictError, DomainError, NotFoundError


class AssistantNotFound(NotFoundError):
    default_detail = "Assistant not found."


class ConversationNotFound(NotFoundError):
    default_detail = "Conversation not found."


class TurnInProgress(ConflictError):
    code = "turn_in_progress"
    default_detail = "The previous turn of this conversation is still running."


class InvalidAssistant(DomainError):
    code = "invalid_assistant"
    default_detail = "The assistant's settings are not valid."


def to_assistant(row: Assistant) -> AssistantContract:
    return AssistantContract(
        id=row.id,
        organization_id=row.organization_id,
        name=row.name,
        system_prompt=row.system_prompt,
        model=row.model,
        fallback_models=list(row.fallback_models),
        default_priority=row.default_priority,
        context_token_budget=row.context_token_budget,
        max_tokens=row.max_tokens,
        metadata=row.metadata,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _summary_fields(row: Conversation) -> dict[str, object]:
    return {
        "id": row.id,
        "organization_id": row.organization_id,
        "assistant_id": row.assistant_id,
        "title": row.title,
        "model": row.model,
        "fallback_models": list(row.fallback_models),
        "priority": row.priority,
        "context_token_budget": row.context_token_budget,
        "turn_count": row.turn_count,
        "active_turn_id": row.active_turn_id,
        "metadata": row.metadata,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def to_summary(row: Conversation) -> ConversationSummary:
    return ConversationSummary.model_validate(_summary_fields(row))


def to_conversation(row: Conversation, turns: list[TurnContract]) -> ConversationContract:
    return ConversationContract.model_validate(
        {**_summary_fields(row), "system_prompt": row.system_prompt, "turns": turns}
    )


def to_turn(row: Turn) -> TurnContract:
    return TurnContract(
        id=row.id,
        task_id=row.task_id,
        status=row.status,
        content=row.content,
        reply=row.reply,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        created_at=row.created_at,
        completed_at=row.completed_at,
    )
