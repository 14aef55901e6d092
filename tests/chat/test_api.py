"""The assistants and conversations API (SPEC §4) without workers: CRUD, scoping,
validation, the turn's task on the priority queue, 409 while a turn runs, query counts."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.models import Conversation, Turn
from contracts.llm import QUEUE_FOR_PRIORITY
from llm.models import AITask

pytestmark = pytest.mark.django_db


def make_assistant(tenant, **body):
    payload = {"name": "Support bot", "system_prompt": "You are terse.", "model": "fake-small", **body}
    response = tenant.client.post("/api/v1/assistants/", payload, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def start(tenant, **body):
    response = tenant.client.post("/api/v1/conversations/", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()


def say(tenant, conversation_id: str, content: str, **extra):
    return tenant.client.post(
        f"/api/v1/conversations/{conversation_id}/messages/", {"content": content}, format="json", **extra
    )


def test_assistant_crud_is_scoped_to_the_organization(make_tenant) -> None:
    alice, bob = make_tenant(), make_tenant()
    created = make_assistant(alice, fallback_models=["fake-large"], context_token_budget=500, metadata={"team": "x"})
    assert created["fallback_models"] == ["fake-large"]
    assert created["default_priority"] == "high"
    url = f"/api/v1/assistants/{created['id']}/"
    assert alice.client.get(url).json()["name"] == "Support bot"
    assert bob.client.get(url).status_code == 404
    assert bob.client.patch(url, {"name": "x"}, format="json").status_code == 404
    assert bob.client.delete(url).status_code == 404
    patched = alice.client.patch(url, {"system_prompt": "Be kind."}, format="json").json()
    assert (patched["system_prompt"], patched["name"]) == ("Be kind.", "Support bot")
    assert [a["id"] for a in alice.client.get("/api/v1/assistants/").json()["results"]] == [created["id"]]
    assert bob.client.get("/api/v1/assistants/").json()["results"] == []
    assert alice.client.delete(url).status_code == 204
    assert alice.client.get(url).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "x", "model": "gpt-nonexistent"},
        {"name": "x", "fallback_models": ["no-such-model"]},
        {"name": "x", "model": "fake-small", "fallback_models": ["fake-small"]},
        {"name": "x", "context_token_budget": 0},
        {"name": "x", "default_priority": "urgent"},
        {"name": "x", "metadata": {"k": "v" * 5000}},
        {"name": "x", "fallback_models": "fake-large"},
    ],
)
def test_assistant_input_errors_are_400(tenant, body) -> None:
    response = tenant.client.post("/api/v1/assistants/", body, format="json")
    assert response.status_code == 400, response.content


def test_conversation_uses_the_assistant_settings_and_overrides(tenant) -> None:
    assistant = make_assistant(tenant, fallback_models=["fake-large"])
    conversation = start(tenant, assistant_id=assistant["id"])
    assert (conversation["model"], conversation["fallback_models"]) == ("fake-small", ["fake-large"])
    assert conversation["priority"] == "high"
    other = start(tenant, assistant_id=assistant["id"], model="fake-large", system_prompt="Other.")
    assert (other["model"], other["fallback_models"]) == ("fake-large", [])
    bare = start(tenant)
    assert bare["assistant_id"] is None
    assert (
        tenant.client.post("/api/v1/conversations/", {"assistant_id": str(uuid.uuid4())}, format="json").status_code
        == 404
    )
    assert tenant.client.post("/api/v1/conversations/", {"model": "nope"}, format="json").status_code == 400


def test_a_turn_is_an_ai_task_on_the_priority_queue_with_the_message_list(tenant) -> None:
    assistant = make_assistant(tenant)
    conversation = start(tenant, assistant_id=assistant["id"])
    response = say(tenant, conversation["id"], "Hello there, bot")
    assert response.status_code == 202, response.json()
    body = response.json()
    assert response["Location"] == f"/api/v1/ai-tasks/{body['task']['id']}/"
    assert body["turn"]["status"] == "running"
    task = AITask.objects.get(id=body["task"]["id"])
    assert task.priority == "high"
    assert task.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello there, bot"},
    ]
    assert task.metadata["conversation_id"] == conversation["id"]
    # No priority worker runs here: the task waits at the dispatch gate for that queue.
    assert QUEUE_FOR_PRIORITY[task.priority] == "priority"
    # The task API shows the turn's task like any other.
    assert tenant.client.get(f"/api/v1/ai-tasks/{task.id}/").json()["priority"] == "high"


def test_409_while_the_previous_turn_runs_then_free_once_it_ended(tenant) -> None:
    conversation = start(tenant)
    first = say(tenant, conversation["id"], "first message")
    assert first.status_code == 202
    second = say(tenant, conversation["id"], "second message")
    assert second.status_code == 409
    assert second.json()["code"] == "turn_in_progress"
    # Cancelling the turn's task ends the turn: the next post goes ahead at once.
    assert tenant.client.post(f"/api/v1/ai-tasks/{first.json()['task']['id']}/cancel/").status_code == 200
    third = say(tenant, conversation["id"], "third message")
    assert third.status_code == 202, third.json()
    turns = tenant.client.get(f"/api/v1/conversations/{conversation['id']}/").json()["turns"]
    assert [(t["content"], t["status"]) for t in turns] == [
        ("first message", "cancelled"),
        ("third message", "running"),
    ]


def test_conversations_of_another_organization_are_404(make_tenant) -> None:
    alice, bob = make_tenant(), make_tenant()
    assistant = make_assistant(alice)
    conversation = start(alice, assistant_id=assistant["id"])
    assert bob.client.get(f"/api/v1/conversations/{conversation['id']}/").status_code == 404
    assert say(bob, conversation["id"], "hello there").status_code == 404
    assert bob.client.get(f"/api/v1/assistants/{assistant['id']}/conversations/").status_code == 404
    assert bob.client.get("/api/v1/conversations/").json()["results"] == []
    assert (
        bob.client.post("/api/v1/conversations/", {"assistant_id": assistant["id"]}, format="json").status_code == 404
    )


@pytest.mark.parametrize(
    "body",
    [{}, {"content": ""}, {"content": "   "}, {"content": "x" * 4001}, {"content": "hi", "callback_url": "ftp://x"}],
)
def test_message_input_errors_are_400(tenant, body) -> None:
    conversation = start(tenant)
    response = tenant.client.post(f"/api/v1/conversations/{conversation['id']}/messages/", body, format="json")
    assert response.status_code == 400


def test_a_message_with_an_idempotency_key_replays(tenant) -> None:
    conversation = start(tenant)
    first = say(tenant, conversation["id"], "hello there", HTTP_IDEMPOTENCY_KEY="k-1")
    again = say(tenant, conversation["id"], "hello there", HTTP_IDEMPOTENCY_KEY="k-1")
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["task"]["id"] == first.json()["task"]["id"]
    assert again["Idempotent-Replayed"] == "true"
    assert say(tenant, conversation["id"], "another text", HTTP_IDEMPOTENCY_KEY="k-1").status_code == 422


def test_lists_are_newest_first_cursor_paginated(tenant) -> None:
    assistant = make_assistant(tenant)
    ids = [start(tenant, assistant_id=assistant["id"])["id"] for _ in range(5)]
    start(tenant)  # not the assistant's
    first = tenant.client.get(f"/api/v1/assistants/{assistant['id']}/conversations/?limit=2").json()
    second = tenant.client.get(first["next"]).json()
    third = tenant.client.get(second["next"]).json()
    assert [c["id"] for page in (first, second, third) for c in page["results"]] == ids[::-1]
    assert third["next_cursor"] is None
    assert len(tenant.client.get("/api/v1/conversations/").json()["results"]) == 6
    assert tenant.client.get("/api/v1/conversations/?cursor=garbage").status_code == 400


def test_lists_never_load_transcripts(tenant) -> None:
    assistant = make_assistant(tenant)
    start(tenant, assistant_id=assistant["id"], system_prompt="SECRET-LONG-PROMPT")
    for url in ("/api/v1/conversations/", f"/api/v1/assistants/{assistant['id']}/conversations/"):
        with CaptureQueriesContext(connection) as captured:
            assert tenant.client.get(url).status_code == 200
        sql = " ".join(q["sql"] for q in captured.captured_queries)
        assert '"chat_conversation"."system_prompt"' not in sql
        assert "chat_turn" not in sql


def _seed(tenant, assistant_id: str, conversations: int, turns: int) -> str:
    org = uuid.UUID(tenant.organization_id)
    rows = Conversation.objects.bulk_create(
        Conversation(organization_id=org, assistant_id=assistant_id, model="fake-small") for _ in range(conversations)
    )
    Turn.objects.bulk_create(
        Turn(conversation=rows[0], task_id=uuid.uuid4(), content=f"m{i}", reply="r", status="done")
        for i in range(turns)
    )
    return str(rows[0].id)


@pytest.mark.parametrize("n", [1, 30])
def test_query_counts_do_not_grow_with_n(tenant, n, django_assert_num_queries) -> None:
    for _ in range(n):
        make_assistant(tenant)
    assistant_id = tenant.client.get("/api/v1/assistants/?limit=1").json()["results"][0]["id"]
    conversation_id = _seed(tenant, assistant_id, conversations=n, turns=n)
    tenant.client.get("/api/v1/me/")  # last_used_at settles first
    with django_assert_num_queries(2):  # key lookup + one page
        assert len(tenant.client.get("/api/v1/assistants/?limit=100").json()["results"]) == n
    with django_assert_num_queries(2):
        tenant.client.get(f"/api/v1/assistants/{assistant_id}/")
    with django_assert_num_queries(3):  # key, the assistant (scope), one page
        assert (
            len(tenant.client.get(f"/api/v1/assistants/{assistant_id}/conversations/?limit=100").json()["results"]) == n
        )
    with django_assert_num_queries(2):
        assert len(tenant.client.get("/api/v1/conversations/?limit=100").json()["results"]) == n
    with django_assert_num_queries(3):  # key, conversation, turns (no running turn: no task lookup)
        assert len(tenant.client.get(f"/api/v1/conversations/{conversation_id}/").json()["turns"]) == n


@pytest.mark.parametrize("n", [2, 40])
def test_posting_a_turn_costs_the_same_queries_whatever_the_history(tenant, n, django_assert_num_queries) -> None:
    conversation_id = start(tenant)["id"]
    conversation = Conversation.objects.get(id=conversation_id)
    Turn.objects.bulk_create(
        Turn(conversation=conversation, task_id=uuid.uuid4(), content=f"q{i}", reply=f"a{i}", status="done")
        for i in range(n)
    )
    Conversation.objects.filter(id=conversation_id).update(answered_turns=n)
    tenant.client.get("/api/v1/me/")
    with django_assert_num_queries(
        18
    ):  # the task submit (budget, gate, its writes in one), the turn lock, one context query
        response = say(tenant, conversation_id, "next question")
    assert response.status_code == 202
    assert len(AITask.objects.get(id=response.json()["task"]["id"]).messages or []) == 2 * n + 1


def test_a_turn_refused_for_budget_is_402_and_leaves_the_conversation_free(tenant) -> None:
    from billing import services as billing

    conversation_id = start(tenant)["id"]
    billing.budget_set(organization_id=uuid.UUID(tenant.organization_id), limit_usd=Decimal(0))
    refused = say(tenant, conversation_id, "hello there")
    assert refused.status_code == 402
    row = Conversation.objects.get(id=conversation_id)
    assert (row.active_turn_id, row.turn_count, Turn.objects.count()) == (None, 0, 0)
    billing.budget_set(organization_id=uuid.UUID(tenant.organization_id), limit_usd=Decimal(10))
    assert say(tenant, conversation_id, "hello there").status_code == 202


def test_a_cached_answer_for_an_identical_conversation_state_ends_the_turn_at_once(tenant) -> None:
    from llm import response_cache

    conversation_id = start(tenant, system_prompt="Be brief.")["id"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    key = response_cache.cache_key(
        organization_id=uuid.UUID(tenant.organization_id),
        model="fake-small",
        max_tokens=1024,
        prompt="hello there",
        messages=messages,
    )
    response_cache.put(key, response_cache.CachedAnswer("General Kenobi.", 5, 3))
    first = say(tenant, conversation_id, "hello there").json()
    assert (first["task"]["status"], first["task"]["result"], first["turn"]["status"]) == (
        "done",
        "General Kenobi.",
        "done",
    )
    # The conversation is free at once, and the next turn's context holds the cached answer.
    second = say(tenant, conversation_id, "and then?")
    assert second.status_code == 202
    task = AITask.objects.get(id=second.json()["task"]["id"])
    assert [m["content"] for m in task.messages or []] == ["Be brief.", "hello there", "General Kenobi.", "and then?"]
