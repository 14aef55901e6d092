"""Conversations: starting one, listing them (no transcripts), reading one with its turns."""

from __future__ import annotations

from uuid import UUID

from django.conf import settings

from chat import selectors
from chat.models import Conversation, Turn
from chat.services._common import (
    AssistantNotFound,
    ConversationNotFound,
    to_conversation,
    to_summary,
    to_turn,
)
from chat.services.assistants import check_models
from contracts.chat import Conversation as ConversationContract
from contracts.chat import ConversationPage, ConversationStart, ConversationSummary
from contracts.chat import Turn as TurnContract
from contracts.llm import OPEN_STATUSES
from llm import services as llm


def conversation_start(data: ConversationStart) -> ConversationSummary:
    """A new conversation, with the assistant's settings (``system_prompt`` and ``model``
    given here override them); without an assistant, the defaults."""
    fields: dict[str, object] = {
        "model": settings.LLM_DEFAULT_MODEL,
        "context_token_budget": settings.CHAT_DEFAULT_CONTEXT_TOKENS,
    }
    if data.assistant_id is not None:
        assistant = selectors.assistant_find(organization_id=data.organization_id, assistant_id=data.assistant_id)
        if assistant is None:
            raise AssistantNotFound()
        fields = {
            "assistant_id": assistant.id,
            "system_prompt": assistant.system_prompt,
            "model": assistant.model,
            "fallback_models": list(assistant.fallback_models),
            "priority": assistant.default_priority,
            "context_token_budget": assistant.context_token_budget,
            "max_tokens": assistant.max_tokens,
        }
    if data.system_prompt is not None:
        fields["system_prompt"] = data.system_prompt
    if data.model is not None:
        fields["model"] = data.model
        fallbacks = [name for name in fields.get("fallback_models", []) if name != data.model]  # type: ignore[attr-defined]
        fields["fallback_models"] = fallbacks
    check_models(str(fields["model"]), list(fields.get("fallback_models", [])))  # type: ignore[call-overload]
    row = Conversation.objects.create(
        organization_id=data.organization_id, title=data.title, metadata=data.metadata, **fields
    )
    return to_summary(row)


def conversation_list(
    *, organization_id: UUID, assistant_id: UUID | None = None, cursor: str | None = None, limit: int = 20
) -> ConversationPage:
    """Newest first, without transcripts. With ``assistant_id``: that assistant's recent
    conversations (404 for another organization's assistant)."""
    if assistant_id is not None and not selectors.assistant_exists(
        organization_id=organization_id, assistant_id=assistant_id
    ):
        raise AssistantNotFound()
    rows, next_cursor = selectors.conversation_page(
        organization_id=organization_id, assistant_id=assistant_id, cursor=cursor, limit=limit
    )
    return ConversationPage(results=[to_summary(row) for row in rows], next_cursor=next_cursor)


def conversation_get(*, organization_id: UUID, conversation_id: UUID) -> ConversationContract:
    """The conversation with its turns in order. A turn still marked running shows its
    task's state (the turn row catches up when the next turn arrives)."""
    row = selectors.conversation_find(organization_id=organization_id, conversation_id=conversation_id)
    if row is None:
        raise ConversationNotFound()
    turns = list(selectors.turns_in_order(conversation_id=row.id))
    running = [turn.task_id for turn in turns if turn.status == Turn.Status.RUNNING]
    tasks = llm.tasks_get_many(organization_id=organization_id, task_ids=running)
    shown: list[TurnContract] = []
    for turn in turns:
        contract = to_turn(turn)
        task = tasks.get(turn.task_id)
        if task is not None and task.status not in OPEN_STATUSES:
            contract = contract.model_copy(
                update={
                    "status": "done" if task.status == "done" else task.status,
                    "reply": task.result,
                    "input_tokens": task.input_tokens,
                    "output_tokens": task.output_tokens,
                    "completed_at": task.completed_at,
                }
            )
        shown.append(contract)
    return to_conversation(row, shown)
