"""Posting a turn: one turn at a time per conversation, enforced in PostgreSQL.

A turn is an AI task of the llm context (``llm.services.task_submit``, on the
conversation's priority: ``high`` → the ``priority`` queue by default), so SSE, cancel,
idempotency keys, budgets and webhooks work exactly as for tasks.

One at a time: ``Conversation.active_turn_id`` is taken by a conditional UPDATE that
matches only the value this request saw (NULL, or a turn whose task it found finished),
so of concurrent posts exactly one wins and the others answer 409; a partial unique
index (one ``running`` turn per conversation) backs it up. Freeing: nothing waits for
the outbox relay. The next post reads the active turn's task (one query); a finished
task's turn is closed there and then (its answer folded into the context) and the post
goes ahead. So a turn's end frees the conversation the moment its task is terminal.
"""

from __future__ import annotations

import uuid

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from chat import selectors
from chat.models import Conversation, Turn
from chat.services import context
from chat.services._common import ConversationNotFound, TurnInProgress, to_turn
from contracts.chat import TurnAccepted, TurnPost
from contracts.llm import OPEN_STATUSES, AITaskSummary, TaskSubmission
from llm import services as llm


def turn_post(post: TurnPost) -> TurnAccepted:
    with transaction.atomic():
        conversation = selectors.conversation_find(
            organization_id=post.organization_id, conversation_id=post.conversation_id
        )
        if conversation is None:
            raise ConversationNotFound()
        seen = conversation.active_turn_id
        just_answered = _close_finished(conversation, seen) if seen is not None else None
        turn_id = uuid.uuid4()
        # NULL or the turn this request found finished (the event handler may have freed it).
        free = Q(active_turn_id__isnull=True) | Q(active_turn_id=seen)
        taken = Conversation.objects.filter(free, id=conversation.id).update(
            active_turn_id=turn_id, turn_count=F("turn_count") + 1, updated_at=timezone.now()
        )
        if not taken:  # another post took the conversation first
            raise TurnInProgress()
        conversation.refresh_from_db()
        turns = context.history(conversation, just_answered=just_answered)
        messages = context.trim(
            system_prompt=conversation.system_prompt,
            turns=turns,
            message=post.content,
            budget=conversation.context_token_budget,
        )
        task = llm.task_submit(
            TaskSubmission(
                organization_id=post.organization_id,
                api_key_id=post.api_key_id,
                prompt=post.content,
                messages=messages,
                model=conversation.model,
                fallback_models=list(conversation.fallback_models),
                priority=conversation.priority,
                max_tokens=conversation.max_tokens,
                metadata={**post.metadata, "conversation_id": str(conversation.id), "turn_id": str(turn_id)},
                callback_url=post.callback_url,
                request_id=post.request_id,
            )
        )
        turn = Turn.objects.create(id=turn_id, conversation=conversation, task_id=task.id, content=post.content)
        if task.status not in OPEN_STATUSES:  # a response-cache hit: answered already
            _close(conversation, turn, task, free=True)
            turn.refresh_from_db()
    return TurnAccepted(turn=to_turn(turn), task=task, context=messages)


def turn_finished(*, organization_id: uuid.UUID, task_id: uuid.UUID) -> bool:
    """The task of a turn ended (the outbox event, at least once): close the turn, fold
    its answer into the context and free the conversation. True if this closed it."""
    turn = Turn.objects.filter(task_id=task_id, status=Turn.Status.RUNNING).select_related("conversation").first()
    if turn is None:
        return False
    task = llm.tasks_get_many(organization_id=organization_id, task_ids=[task_id]).get(task_id)
    if task is None or task.status in OPEN_STATUSES:
        return False
    with transaction.atomic():
        conversation = turn.conversation
        pair = _close(conversation, turn, task, free=True)
        if pair is not None:
            context.fold(conversation, pair)
    return True


def _close_finished(conversation: Conversation, turn_id: uuid.UUID) -> tuple[str, str] | None:
    """Close the active turn if its task finished (else 409); the (user, assistant) pair
    when this closed an answered turn."""
    turn = Turn.objects.filter(id=turn_id, conversation_id=conversation.id).first()
    if turn is None or turn.status != Turn.Status.RUNNING:
        return None
    found = llm.tasks_get_many(organization_id=conversation.organization_id, task_ids=[turn.task_id])
    task = found.get(turn.task_id)
    if task is not None and task.status in OPEN_STATUSES:
        raise TurnInProgress()
    if task is None:  # cannot happen (tasks are never deleted); do not block the conversation
        Turn.objects.filter(id=turn.id, status=Turn.Status.RUNNING).update(
            status=Turn.Status.FAILED, completed_at=timezone.now()
        )
        return None
    return _close(conversation, turn, task)


def _close(
    conversation: Conversation, turn: Turn, task: AITaskSummary, *, free: bool = False
) -> tuple[str, str] | None:
    """Record the task's end on the turn (once: a conditional UPDATE); with ``free``, let
    the conversation go (else the caller's conditional UPDATE hands it to the next turn)."""
    status = {"done": Turn.Status.DONE, "cancelled": Turn.Status.CANCELLED}.get(task.status, Turn.Status.FAILED)
    closed = Turn.objects.filter(id=turn.id, status=Turn.Status.RUNNING).update(
        status=status,
        reply=task.result if status == Turn.Status.DONE else None,
        input_tokens=task.input_tokens,
        output_tokens=task.output_tokens,
        completed_at=task.completed_at or timezone.now(),
    )
    if not closed:
        return None
    if free:
        Conversation.objects.filter(id=conversation.id, active_turn_id=turn.id).update(active_turn_id=None)
    if status == Turn.Status.DONE:
        Conversation.objects.filter(id=conversation.id).update(answered_turns=F("answered_turns") + 1)
        conversation.refresh_from_db()
        return turn.content, task.result or ""
    conversation.refresh_from_db()
    return None
