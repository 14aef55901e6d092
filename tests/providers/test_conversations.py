"""Multi-turn input: a conversation turn's task (system prompt, user and assistant
messages) reaches every provider as a message list, and the fake's per-model outage
and echo directives."""

from __future__ import annotations

import json

import pytest

from llm.models import AITask
from llm.providers import Completion, CompletionRequest, Message, ProviderUnavailable
from llm.providers.fake import Directives, FakeProvider
from llm.services.fallback import request_for
from tests.providers.conftest import KINDS, MakeProvider
from tests.providers.wire import WireServer

TURN = AITask(
    prompt="And the evening one?",
    model="fake-small",
    max_tokens=32,
    attempts=2,
    messages=[
        {"role": "system", "content": "You are the yard clerk."},
        {"role": "user", "content": "When does the morning freight leave?"},
        {"role": "assistant", "content": "At six."},
        {"role": "user", "content": "And the evening one?"},
    ],
)
HISTORY = [
    {"role": "user", "content": "When does the morning freight leave?"},
    {"role": "assistant", "content": "At six."},
    {"role": "user", "content": "And the evening one?"},
]


def test_a_turn_task_becomes_a_request_with_the_system_prompt_apart() -> None:
    request = request_for(TURN, "test-model-1")
    assert request.system == "You are the yard clerk."
    assert request.messages == (
        Message("user", "When does the morning freight leave?"),
        Message("assistant", "At six."),
        Message("user", "And the evening one?"),
    )
    assert (request.model, request.max_tokens, request.attempt) == ("test-model-1", 32, 2)


def test_a_plain_task_is_one_user_message() -> None:
    request = request_for(AITask(prompt="Hello there", model="fake-small", max_tokens=8, attempts=1), "fake-small")
    assert (request.messages, request.system) == ((Message("user", "Hello there"),), None)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_every_adapter_sends_the_turn_as_a_message_list(
    kind: str, stream: bool, wire: WireServer, make_provider: MakeProvider
) -> None:
    provider = make_provider(kind)
    request = request_for(TURN, "test-model-1")
    if stream:
        assert isinstance(list(provider.stream(request))[-1], Completion)
    else:
        provider.complete(request)
    [received] = wire.received
    if kind == "anthropic":
        assert received.body["system"] == "You are the yard clerk."
        assert received.body["messages"] == HISTORY
    else:
        assert received.body["messages"] == [{"role": "system", "content": "You are the yard clerk."}, *HISTORY]


def test_echo_answers_with_what_the_provider_received() -> None:
    request = request_for(TURN, "fake-large")
    request = CompletionRequest(
        model=request.model,
        messages=(*request.messages[:-1], Message("user", "And the evening one? #fake:echo")),
        max_tokens=4,  # the echo is never cut
        system=request.system,
    )
    completion = FakeProvider(latency_ms=0).complete(request)
    assert json.loads(completion.text) == {
        "model": "fake-large",
        "system": "You are the yard clerk.",
        "messages": [
            ["user", "When does the morning freight leave?"],
            ["assistant", "At six."],
            ["user", "And the evening one? #fake:echo"],
        ],
    }


def test_an_error_for_one_model_fails_only_that_model() -> None:
    fake = FakeProvider(latency_ms=0)
    small = CompletionRequest.from_prompt("Hello #fake:error=503@fake-small", model="fake-small", max_tokens=16)
    large = CompletionRequest.from_prompt("Hello #fake:error=503@fake-small", model="fake-large", max_tokens=16)
    with pytest.raises(ProviderUnavailable, match="fake-small"):
        fake.complete(small)
    assert fake.complete(large).text
    assert list(fake.stream(large))[-1]


@pytest.mark.parametrize(
    ("text", "status", "times", "model"),
    [
        ("#fake:error=503@fake-small", 503, None, "fake-small"),
        ("#fake:error=500:2@fake-large.", 500, 2, "fake-large"),
        ("#fake:error=429", 429, None, None),
        ("#fake:error=503@", None, None, None),  # a dangling @ is junk: the directive is ignored
    ],
)
def test_error_directive_with_a_model(text: str, status: int | None, times: int | None, model: str | None) -> None:
    directives = Directives.parse(text)
    assert (directives.error_status, directives.error_attempts, directives.error_model) == (status, times, model)
