"""Conversations end to end (issue 10): real PostgreSQL, Redis, a Celery worker on the
``priority`` queue (started as production starts it) and the fake provider, whose
``#fake:echo`` directive answers with exactly what the provider received."""

from __future__ import annotations

import json
import threading
import uuid
from decimal import Decimal

import pytest
from django.conf import settings
from django.test import override_settings

from billing import services as billing
from chat import services as chat
from chat.models import Conversation
from llm import breaker
from llm.models import AITask
from llm.providers.tokens import estimate_prompt_tokens, estimate_tokens
from tests.pipeline.test_pipeline import read_sse, wait_terminal
from tests.support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
SYSTEM = "You are the yard clerk. Answer briefly."


def start(tenant, **body) -> str:
    response = tenant.client.post("/api/v1/conversations/", body, format="json")
    assert response.status_code == 201, response.json()
    return response.json()["id"]


def post(tenant, conversation_id: str, content: str) -> dict:
    response = tenant.client.post(
        f"/api/v1/conversations/{conversation_id}/messages/", {"content": content}, format="json"
    )
    assert response.status_code == 202, response.json()
    return response.json()


def turn(tenant, conversation_id: str, content: str) -> AITask:
    task = wait_terminal(post(tenant, conversation_id, content)["task"]["id"])
    assert task.status == "done", (task.error_code, task.error)
    return task


def echoed(task: AITask) -> dict:
    assert task.result is not None
    return json.loads(task.result)


def test_the_third_prompt_holds_the_first_two_turns_from_redis_from_postgres_and_with_redis_down(
    tenant, start_worker
) -> None:
    start_worker("priority")
    conversation = start(tenant, system_prompt=SYSTEM)
    first = turn(tenant, conversation, "Which track does the morning freight use?")
    second = turn(tenant, conversation, "And when does it leave the yard?")
    third = turn(tenant, conversation, "Summarise what we said. #fake:echo")
    history = [
        ["user", "Which track does the morning freight use?"],
        ["assistant", first.result],
        ["user", "And when does it leave the yard?"],
        ["assistant", second.result],
    ]
    received = echoed(third)
    assert received["system"] == SYSTEM
    assert received["messages"] == [*history, ["user", "Summarise what we said. #fake:echo"]]
    # The fake counted the whole list as input, and the task was built from the same list.
    assert third.input_tokens == estimate_prompt_tokens([SYSTEM, *(content for _, content in received["messages"])])
    assert [m["role"] for m in third.messages or []] == ["system", "user", "assistant", "user", "assistant", "user"]
    history += [["user", "Summarise what we said. #fake:echo"], ["assistant", third.result]]

    # The cached context is gone: rebuilt from PostgreSQL, the same conversation state.
    chat.context_forget(conversation)
    fourth = turn(tenant, conversation, "Once more, after a cache miss. #fake:echo")
    assert echoed(fourth)["messages"] == [*history, ["user", "Once more, after a cache miss. #fake:echo"]]
    history += [["user", "Once more, after a cache miss. #fake:echo"], ["assistant", fourth.result]]

    # Redis is down for the web process (its cache points at a closed port): the turn is
    # still accepted, with its context rebuilt from PostgreSQL; the worker answers it.
    dead = {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}
    with override_settings(CACHES={"default": dead}):
        accepted = post(tenant, conversation, "And with Redis down? #fake:echo")
    fifth = wait_terminal(accepted["task"]["id"])
    assert fifth.status == "done"
    assert echoed(fifth)["messages"] == [*history, ["user", "And with Redis down? #fake:echo"]]
    detail = tenant.client.get(f"/api/v1/conversations/{conversation}/").json()
    assert [t["status"] for t in detail["turns"]] == ["done"] * 5
    assert detail["turns"][0]["reply"] == first.result


def test_trimming_keeps_the_system_prompt_and_drops_the_oldest_turns(tenant, start_worker) -> None:
    start_worker("priority")
    budget = 64
    assistant = tenant.client.post(
        "/api/v1/assistants/",
        {"name": "Small", "system_prompt": SYSTEM, "context_token_budget": budget, "max_tokens": 8},
        format="json",
    ).json()
    conversation = start(tenant, assistant_id=assistant["id"])
    pairs = []
    for n in range(3):
        content = f"Turn {n}:" + " freight" * 10
        pairs.append((content, turn(tenant, conversation, content).result or ""))
    new = "What now? #fake:echo"
    received = echoed(turn(tenant, conversation, new))
    assert received["system"] == SYSTEM  # always kept
    assert received["messages"][-1] == ["user", new]  # always kept
    kept = [tuple(m[1] for m in received["messages"][i : i + 2]) for i in range(0, len(received["messages"]) - 1, 2)]
    # The newest turns, in order, as many as fit; the oldest went first.
    assert 1 <= len(kept) < 3
    assert kept == pairs[-len(kept) :]

    def tokens(*texts: str) -> int:
        return sum(estimate_tokens(text) for text in texts)

    used = tokens(SYSTEM, new, *(text for pair in kept for text in pair))
    assert used <= budget < used + tokens(*pairs[-len(kept) - 1])


def test_a_turn_streams_over_sse(tenant, start_worker, stream_server) -> None:
    start_worker("priority")
    conversation = start(tenant)
    accepted = post(tenant, conversation, "Tell me slowly. #fake:sleep=1500")
    events = read_sse(stream_server, tenant, accepted["task"]["id"])
    deltas = [e for e in events if e["event"] == "delta"]
    assert deltas, events
    assert events[-1]["event"] == "status" and events[-1]["data"]["status"] == "done"
    task = AITask.objects.get(id=accepted["task"]["id"])
    # A client that connects while the turn runs gets the deltas from then on.
    assert task.result is not None and task.result.endswith("".join(e["data"]["text"] for e in deltas))


def test_a_failing_model_falls_back_and_the_breaker_then_skips_it(tenant, start_worker) -> None:
    failures = 2
    start_worker("priority", LLM_BREAKER_FAILURES=str(failures), LLM_BREAKER_COOLDOWN_S="120")
    assistant = tenant.client.post(
        "/api/v1/assistants/",
        {"name": "Resilient", "model": "fake-small", "fallback_models": ["fake-large"]},
        format="json",
    ).json()
    conversation = start(tenant, assistant_id=assistant["id"])
    large = billing.price_current(model="fake-large")
    for n in range(failures):
        task = turn(tenant, conversation, f"Outage turn {n}. #fake:error=503@fake-small")
        # fake-small failed (503), the retry went to fake-large, which answered.
        assert (task.attempts, task.served_model) == (2, "fake-large")
        expected = (
            task.input_tokens * large.input_usd_per_mtok + task.output_tokens * large.output_usd_per_mtok
        ) / 10**6
        assert task.cost_usd == expected.quantize(Decimal("1e-10"))
        assert task.input_usd_per_mtok == large.input_usd_per_mtok
    assert breaker.state("fake-small") == "open"
    # Open: the next turns go straight to fake-large, fake-small is not tried (one attempt).
    for n in range(2):
        task = turn(tenant, conversation, f"While open {n}. #fake:error=503@fake-small")
        assert (task.attempts, task.served_model) == (1, "fake-large")
    usage = billing.usage_report(
        organization_id=uuid.UUID(tenant.organization_id),
        start=task.created_at.date(),
        end=task.created_at.date(),
        group_by="model",
    )
    assert {row.model: row.tasks for row in usage} == {"fake-large": 4}
    assert Conversation.objects.get(id=conversation).turn_count == 4


def test_twenty_concurrent_posts_start_one_turn(tenant, start_worker) -> None:
    conversation = start(tenant)
    from rest_framework.test import APIClient

    def burst() -> list[int]:
        codes: list[int] = []
        barrier = threading.Barrier(20)

        def one(n: int) -> None:
            client = APIClient()
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.issued.key}")
            barrier.wait()
            response = client.post(
                f"/api/v1/conversations/{conversation}/messages/", {"content": f"Hi {n} #fake:sleep=300"}, format="json"
            )
            codes.append(response.status_code)

        threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(codes)

    assert burst() == [202] + [409] * 19
    start_worker("priority")
    wait_terminal(str(AITask.objects.get().id))
    # The first turn ended: of the next burst, again exactly one goes ahead.
    assert burst() == [202] + [409] * 19
    assert AITask.objects.count() == 2
