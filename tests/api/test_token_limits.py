"""Tokens per minute per API key and per organization: the estimate (prompt + max_tokens)
is reserved at submit (429 when over), corrected when the task settles."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from billing import services as billing
from llm import response_cache
from llm.limits import task_token_estimate
from llm.models import AITask
from users import services as users
from users.models import APIKey, Organization

pytestmark = pytest.mark.django_db
PROMPT = "Summarise the quarterly report."  # 31 characters: 8 tokens
ESTIMATE = 8 + 1000


def submit(tenant, **body):
    return tenant.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT, "max_tokens": 1000, **body}, format="json")


def test_estimate_is_prompt_estimate_plus_max_tokens() -> None:
    assert task_token_estimate(prompt=PROMPT, messages=None, max_tokens=1000) == ESTIMATE


def test_key_over_its_tokens_per_minute_gets_429_until_corrected(tenant, settings) -> None:
    settings.KEY_TOKENS_PER_MINUTE = 2 * ESTIMATE + 500
    first = submit(tenant, cache=False)
    assert first.status_code == 202
    assert submit(tenant, cache=False).status_code == 202
    refused = submit(tenant, cache=False)
    assert refused.status_code == 429
    assert refused.json()["code"] == "tokens_throttled"
    assert 1 <= int(refused["Retry-After"]) <= 120
    assert AITask.objects.count() == 2  # nothing inserted, no budget reserved
    # The first task settles having used 50 tokens, not 1,008: the room comes back.
    users.token_usage_correct(
        organization_id=uuid.UUID(tenant.organization_id),
        api_key_id=uuid.UUID(tenant.api_key_id),
        estimated=ESTIMATE,
        actual=50,
    )
    assert submit(tenant, cache=False).status_code == 202


def test_correction_upwards_counts_the_extra_tokens(tenant, settings) -> None:
    settings.KEY_TOKENS_PER_MINUTE = 2 * ESTIMATE + 500
    assert submit(tenant, cache=False).status_code == 202
    users.token_usage_correct(
        organization_id=uuid.UUID(tenant.organization_id),
        api_key_id=uuid.UUID(tenant.api_key_id),
        estimated=ESTIMATE,
        actual=ESTIMATE + 1000,  # the prompt estimate was far too low
    )
    assert submit(tenant, cache=False).status_code == 429


def test_organization_tokens_span_its_keys(make_tenant, settings) -> None:
    settings.ORG_TOKENS_PER_MINUTE = 2 * ESTIMATE
    first = make_tenant(org="Token org")
    second = make_tenant(org="Token org", email="b@token.test")
    assert submit(first, cache=False).status_code == 202
    assert submit(second, cache=False).status_code == 202
    assert submit(first, cache=False).status_code == 429
    assert submit(make_tenant(), cache=False).status_code == 202  # another organization


def test_a_refusal_by_the_organization_gives_the_key_its_tokens_back(make_tenant, settings) -> None:
    settings.KEY_TOKENS_PER_MINUTE = 2 * ESTIMATE
    tenant = make_tenant()
    Organization.objects.filter(id=tenant.organization_id).update(tokens_per_minute=ESTIMATE)
    assert submit(tenant, cache=False).status_code == 202
    assert submit(tenant, cache=False).status_code == 429  # the organization said no
    Organization.objects.filter(id=tenant.organization_id).update(tokens_per_minute=0)
    assert submit(tenant, cache=False).status_code == 202  # the key still has room for one


def test_key_override_and_a_request_larger_than_the_limit(tenant) -> None:
    APIKey.objects.filter(id=tenant.api_key_id).update(tokens_per_minute=500)
    refused = submit(tenant, cache=False)
    assert refused.status_code == 429
    assert "max_tokens" in refused.json()["detail"]
    assert submit(tenant, cache=False, max_tokens=100).status_code == 202


def test_cancel_gives_the_tokens_back(tenant, settings, django_capture_on_commit_callbacks) -> None:
    settings.KEY_TOKENS_PER_MINUTE = ESTIMATE
    task_id = submit(tenant, cache=False).json()["id"]
    assert submit(tenant, cache=False).status_code == 429
    with django_capture_on_commit_callbacks(execute=True):
        assert tenant.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/").status_code == 200
    assert submit(tenant, cache=False).status_code == 202


def test_a_budget_refusal_reserves_no_tokens(tenant, settings) -> None:
    settings.KEY_TOKENS_PER_MINUTE = ESTIMATE
    organization_id = uuid.UUID(tenant.organization_id)
    billing.budget_set(organization_id=organization_id, limit_usd=Decimal("0"))
    assert submit(tenant, cache=False).status_code == 402
    billing.budget_set(organization_id=organization_id, limit_usd=Decimal("100"))
    assert submit(tenant, cache=False).status_code == 202


def test_cache_hits_reserve_no_tokens(tenant, settings) -> None:
    settings.KEY_TOKENS_PER_MINUTE = ESTIMATE
    key = response_cache.cache_key(
        organization_id=uuid.UUID(tenant.organization_id), model="fake-small", max_tokens=1000, prompt=PROMPT
    )
    response_cache.put(key, response_cache.CachedAnswer(text="cached", input_tokens=8, output_tokens=2))
    assert [submit(tenant).json()["cached"] for _ in range(3)] == [True, True, True]
    assert submit(tenant, cache=False).status_code == 202


def test_a_conversation_turn_counts_its_whole_message_list(tenant, settings) -> None:
    """A turn's provider input is every message (system prompt and earlier turns), so its
    tokens-per-minute estimate is too: here the last message alone would fit, the list not."""
    from contracts.llm import ChatMessage, TaskSubmission
    from llm import services as llm

    history = [
        ChatMessage(role="system", content="You are terse. " * 50),
        ChatMessage(role="user", content="Tell me about the report. " * 40),
        ChatMessage(role="assistant", content="It says revenue grew. " * 40),
        ChatMessage(role="user", content=PROMPT),
    ]
    whole = task_token_estimate(prompt=PROMPT, messages=history, max_tokens=100)
    assert whole > task_token_estimate(prompt=PROMPT, messages=None, max_tokens=100) + 500
    settings.KEY_TOKENS_PER_MINUTE = whole - 1
    submission = TaskSubmission(
        organization_id=uuid.UUID(tenant.organization_id),
        api_key_id=uuid.UUID(tenant.api_key_id),
        prompt=PROMPT,
        messages=history,
        model="fake-small",
        max_tokens=100,
        use_cache=False,
    )
    with pytest.raises(users.TokensRateLimited):
        llm.task_submit(submission)
    settings.KEY_TOKENS_PER_MINUTE = whole
    task = llm.task_submit(submission)
    assert task.status == "pending"
    users.token_usage_correct(  # settling at the estimate leaves no room for one more token
        organization_id=task.organization_id, api_key_id=uuid.UUID(tenant.api_key_id), estimated=whole, actual=whole
    )
    with pytest.raises(users.TokensRateLimited):
        llm.task_submit(submission.model_copy(update={"max_tokens": 1}))
