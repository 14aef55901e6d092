"""The next turn's context: trimming to the budget, the versioned Redis cache, the
response-cache key over the whole message list, and the finished-task handler."""

from __future__ import annotations

import uuid

import pytest

from chat import services
from chat.models import Conversation, Turn
from chat.services import context
from llm.providers.tokens import estimate_tokens
from llm.response_cache import cache_key

SYSTEM = "You are terse."  # 4 tokens


def pair(n: int) -> tuple[str, str]:
    return (f"question {n} " + "x" * 24, f"answer {n} " + "y" * 26)  # 9 + 9 tokens


def test_trim_keeps_the_system_prompt_and_the_new_message_and_drops_the_oldest_turns() -> None:
    turns = [pair(n) for n in range(5)]
    fixed = estimate_tokens(SYSTEM) + estimate_tokens("now?")
    messages = context.trim(system_prompt=SYSTEM, turns=turns, message="now?", budget=fixed + 2 * 18 + 17)
    assert [m.role for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[0].content == SYSTEM and messages[-1].content == "now?"
    assert [m.content for m in messages[1:-1]] == [*pair(3), *pair(4)]  # the two newest


def test_trim_below_the_fixed_part_still_sends_system_prompt_and_message() -> None:
    messages = context.trim(system_prompt=SYSTEM, turns=[pair(0)], message="a long new message", budget=1)
    assert [(m.role, m.content) for m in messages] == [("system", SYSTEM), ("user", "a long new message")]


def test_trim_without_a_system_prompt() -> None:
    messages = context.trim(system_prompt="", turns=[pair(0)], message="next", budget=1000)
    assert [m.role for m in messages] == ["user", "assistant", "user"]


def test_the_response_cache_key_covers_the_whole_message_list_per_organization() -> None:
    org, other = uuid.uuid4(), uuid.uuid4()
    base = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]

    def key(organization: uuid.UUID, messages: list[dict[str, str]] | None) -> str:
        return cache_key(
            organization_id=organization, model="fake-small", max_tokens=64, prompt="hi", messages=messages
        )

    assert key(org, base) == key(org, [dict(m) for m in base])
    assert key(org, base) != key(other, base)
    assert key(org, base) != key(org, [{"role": "system", "content": "T"}, base[1]])  # another system prompt
    assert key(org, base) != key(org, [{"role": "user", "content": "S"}, base[1]])  # another role
    longer = [base[0], {"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, base[1]]
    assert key(org, base) != key(org, longer)  # an earlier turn
    assert key(org, base) != key(org, None)  # a plain task with the same prompt
    # A plain task keeps the key it had before conversations existed.
    assert key(org, None) == cache_key(organization_id=org, model="fake-small", max_tokens=64, prompt="hi")


@pytest.mark.django_db
def test_history_comes_from_the_cache_for_its_version_and_is_rebuilt_otherwise(
    tenant, django_capture_on_commit_callbacks
) -> None:
    conversation = Conversation.objects.create(
        organization_id=uuid.UUID(tenant.organization_id), model="fake-small", answered_turns=2
    )
    for n in range(2):
        Turn.objects.create(
            conversation=conversation, task_id=uuid.uuid4(), content=pair(n)[0], reply=pair(n)[1], status="done"
        )
    with django_capture_on_commit_callbacks(execute=True):
        assert context.history(conversation) == [pair(0), pair(1)]  # a miss: from PostgreSQL
    # The cached value is what the next turn reads, without PostgreSQL.
    Turn.objects.all().delete()
    assert context.history(conversation) == [pair(0), pair(1)]
    # One turn behind: the answer this transaction folds in is appended.
    conversation.answered_turns = 3
    with django_capture_on_commit_callbacks(execute=True):
        assert context.history(conversation, just_answered=pair(2)) == [pair(0), pair(1), pair(2)]
    # Any other version: rebuilt from PostgreSQL (now empty).
    conversation.answered_turns = 7
    assert context.history(conversation) == []


@pytest.mark.django_db
def test_the_finished_task_event_closes_the_turn_and_frees_the_conversation(tenant) -> None:
    conversation = tenant.client.post("/api/v1/conversations/", {}, format="json").json()["id"]
    accepted = tenant.client.post(
        f"/api/v1/conversations/{conversation}/messages/", {"content": "hello"}, format="json"
    )
    task_id = accepted.json()["task"]["id"]
    assert (
        services.turn_finished(organization_id=uuid.UUID(tenant.organization_id), task_id=uuid.UUID(task_id)) is False
    )
    tenant.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/")
    assert services.turn_finished(organization_id=uuid.UUID(tenant.organization_id), task_id=uuid.UUID(task_id)) is True
    assert (
        services.turn_finished(organization_id=uuid.UUID(tenant.organization_id), task_id=uuid.UUID(task_id)) is False
    )
    row = Conversation.objects.get(id=conversation)
    assert row.active_turn_id is None
    assert Turn.objects.get(task_id=task_id).status == "cancelled"


@pytest.mark.django_db
def test_the_cached_context_lives_30_minutes_by_default_refreshed_on_use(
    tenant, django_capture_on_commit_callbacks
) -> None:
    from typing import Any

    from django.core.cache import cache as django_cache

    from config import settings as production

    cache: Any = django_cache  # django-redis: expire() and ttl()

    assert production.CHAT_CONTEXT_TTL_S == 30 * 60
    conversation = Conversation.objects.create(organization_id=uuid.UUID(tenant.organization_id), model="fake-small")
    with django_capture_on_commit_callbacks(execute=True):
        context.history(conversation)
    key = context.cache_key(conversation.id)
    cache.expire(key, 60)  # as if 29 minutes had passed
    context.history(conversation)  # a read refreshes it
    assert 30 * 60 - 5 <= cache.ttl(key) <= 30 * 60
