"""Published language of the chat context: assistants, conversations and turns, as its
services take and return them. Pure Pydantic: imports nothing from src/ and no Django."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from contracts.base import Contract
from contracts.llm import AITask, ChatMessage, TaskPriority

TurnStatus = Literal["running", "done", "failed", "cancelled"]


class AssistantInput(Contract):
    """Fields of a new assistant, or the fields an update changes (``None``: unchanged)."""

    name: str | None = None
    system_prompt: str | None = None
    model: str | None = None
    fallback_models: list[str] | None = None
    default_priority: TaskPriority | None = None
    context_token_budget: int | None = None
    max_tokens: int | None = None
    metadata: dict[str, Any] | None = None


class Assistant(Contract):
    id: UUID
    organization_id: UUID
    name: str
    system_prompt: str
    model: str
    fallback_models: list[str]
    default_priority: TaskPriority
    context_token_budget: int
    max_tokens: int
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class AssistantPage(Contract):
    results: list[Assistant]
    next_cursor: str | None


class ConversationStart(Contract):
    organization_id: UUID
    assistant_id: UUID | None = None
    system_prompt: str | None = None
    model: str | None = None
    title: str = ""
    metadata: dict[str, Any] = {}


class ConversationSummary(Contract):
    """A conversation without its transcript (what lists return)."""

    id: UUID
    organization_id: UUID
    assistant_id: UUID | None
    title: str
    model: str
    fallback_models: list[str]
    priority: TaskPriority
    context_token_budget: int
    turn_count: int
    active_turn_id: UUID | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class ConversationPage(Contract):
    results: list[ConversationSummary]
    next_cursor: str | None


class Turn(Contract):
    id: UUID
    task_id: UUID
    status: TurnStatus
    content: str
    reply: str | None
    input_tokens: int
    output_tokens: int
    created_at: datetime
    completed_at: datetime | None


class Conversation(ConversationSummary):
    system_prompt: str
    turns: list[Turn]


class TurnPost(Contract):
    organization_id: UUID
    api_key_id: UUID | None
    conversation_id: UUID
    content: str
    callback_url: str | None = None
    metadata: dict[str, Any] = {}
    request_id: str | None = None


class TurnAccepted(Contract):
    """A turn was accepted: the turn and its AI task (poll it, stream it, cancel it)."""

    turn: Turn
    task: AITask
    context: list[ChatMessage]
