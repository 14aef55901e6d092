"""The context of the next turn: what the provider receives besides the new message.

The answered turns of a conversation are cached in Redis (``chat:context:v1:<id>``, TTL
``CHAT_CONTEXT_TTL_S``, refreshed on every use) as ``{"v": answered_turns, "turns":
[[user, assistant], ...]}``. ``v`` is the conversation's ``answered_turns`` counter (a
column bumped in the transaction that folds a turn's answer in), so a cached value is
used only for the state it was built from: one turn behind, the finished turn is appended;
otherwise, on a miss or a Redis outage, it is rebuilt from PostgreSQL (the newest
``REBUILD_TURNS`` answered turns). The cache is written after commit.

``trim`` keeps the system prompt and the new message always, and then as many of the
newest turns as fit in the conversation's token budget: the oldest turns go first.
"""

from __future__ import annotations

from typing import Any

import structlog
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from chat import selectors
from chat.models import Conversation
from contracts.llm import ChatMessage
from llm import services as llm

log = structlog.get_logger(__name__)
VERSION = 1
REBUILD_TURNS = 200
Pair = tuple[str, str]


def cache_key(conversation_id: object) -> str:
    return f"chat:context:v{VERSION}:{conversation_id}"


def _read(key: str) -> dict[str, Any] | None:
    try:
        value = cache.get(key)
        if isinstance(value, dict):
            cache.touch(key, settings.CHAT_CONTEXT_TTL_S)
            return value
    except Exception:  # a cache outage is a miss
        log.warning("chat_context_cache_unavailable", exc_info=True)
    return None


def _write(key: str, value: dict[str, Any]) -> None:
    try:
        cache.set(key, value, timeout=settings.CHAT_CONTEXT_TTL_S)
    except Exception:
        log.warning("chat_context_cache_unavailable", exc_info=True)


def history(conversation: Conversation, *, just_answered: Pair | None = None) -> list[Pair]:
    """The answered turns, oldest first, bounded by the conversation's budget.
    ``just_answered``: the turn folded in by this transaction (``answered_turns`` counts it)."""
    key = cache_key(conversation.id)
    version = conversation.answered_turns
    cached = _read(key)
    turns: list[Pair] | None = None
    if cached is not None and cached.get("v") == version:
        turns = [(u, a) for u, a in cached["turns"]]
    elif cached is not None and just_answered is not None and cached.get("v") == version - 1:
        turns = [*((u, a) for u, a in cached["turns"]), just_answered]
    if turns is None:
        log.info("chat_context_rebuilt", conversation_id=str(conversation.id), version=version)
        newest_first = selectors.answered_turns_newest_first(conversation_id=conversation.id, limit=REBUILD_TURNS)
        turns = list(reversed(newest_first))
    turns = fit(turns, budget=conversation.context_token_budget - llm.estimate_tokens(conversation.system_prompt))
    value = {"v": version, "turns": [list(pair) for pair in turns]}
    transaction.on_commit(lambda: _write(key, value))
    return turns


def fold(conversation: Conversation, pair: Pair) -> None:
    """A turn was answered outside a post (the finished-task event): keep a warm cache warm."""
    key = cache_key(conversation.id)
    cached = _read(key)
    if cached is None or cached.get("v") != conversation.answered_turns - 1:
        return  # the next post rebuilds it
    turns = [*((u, a) for u, a in cached["turns"]), pair]
    turns = fit(turns, budget=conversation.context_token_budget - llm.estimate_tokens(conversation.system_prompt))
    value = {"v": conversation.answered_turns, "turns": [list(p) for p in turns]}
    transaction.on_commit(lambda: _write(key, value))


def _pair_tokens(pair: Pair) -> int:
    return llm.estimate_tokens(pair[0]) + llm.estimate_tokens(pair[1])


def fit(turns: list[Pair], *, budget: int) -> list[Pair]:
    """The newest turns whose tokens add up to at most ``budget`` (oldest dropped first)."""
    kept: list[Pair] = []
    used = 0
    for pair in reversed(turns):
        used += _pair_tokens(pair)
        if used > budget:
            break
        kept.append(pair)
    kept.reverse()
    return kept


def trim(*, system_prompt: str, turns: list[Pair], message: str, budget: int) -> list[ChatMessage]:
    """The message list of the next turn: system prompt (always), the newest turns that fit
    in ``budget`` with it and the new message, the new message (always)."""
    fixed = llm.estimate_tokens(message) + (llm.estimate_tokens(system_prompt) if system_prompt else 0)
    messages: list[ChatMessage] = []
    if system_prompt:
        messages.append(ChatMessage(role="system", content=system_prompt))
    for user, assistant in fit(turns, budget=budget - fixed):
        messages += [ChatMessage(role="user", content=user), ChatMessage(role="assistant", content=assistant)]
    messages.append(ChatMessage(role="user", content=message))
    return messages


def forget(conversation_id: object) -> None:
    """Drop the cached context (staff, tests): the next turn rebuilds it from PostgreSQL."""
    try:
        cache.delete(cache_key(conversation_id))
    except Exception:
        log.warning("chat_context_cache_unavailable", exc_info=True)
