"""Contract tests: the real SDK code of every HTTP provider against a local wire-format server.

Each provider must answer and fail the same way (SPEC §5): text and token counts from
``complete``; deltas and one final ``Completion`` from ``stream``; 429 → RateLimited
with the server's Retry-After; 5xx, timeouts and refused connections →
ProviderUnavailable; other 4xx → ProviderRejected. The SDKs must not retry on their own.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Literal

import pytest

from llm.providers import (
    Completion,
    CompletionRequest,
    Message,
    Provider,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    TextDelta,
)
from tests.providers.conftest import API_KEYS, KINDS, PATHS, MakeProvider, build
from tests.providers.signals import SoftTimeLimit, soft_time_limit
from tests.providers.wire import Reply, WireServer

Mode = Literal["complete", "stream"]
MODES: list[Mode] = ["complete", "stream"]

REQUEST = CompletionRequest(
    model="test-model-1",
    messages=(
        Message("user", "Name a switchyard."),
        Message("assistant", "Which country?"),
        Message("user", "Any."),
    ),
    max_tokens=64,
    system="Answer briefly.",
)


def call(provider: Provider, mode: Mode, request: CompletionRequest = REQUEST) -> Completion:
    if mode == "complete":
        return provider.complete(request)
    events = list(provider.stream(request))
    final = events[-1]
    assert isinstance(final, Completion)
    return final


@pytest.mark.parametrize("kind", KINDS)
def test_complete_returns_text_and_token_counts(kind: str, wire: WireServer, make_provider: MakeProvider) -> None:
    completion = make_provider(kind).complete(REQUEST)

    assert completion == Completion(
        text="Hello, wire world!", input_tokens=11, output_tokens=7, model="test-model-1", finish_reason="stop"
    )
    [received] = wire.received
    assert received.path == PATHS[kind]
    assert received.body["model"] == "test-model-1"
    assert not received.body.get("stream")


@pytest.mark.parametrize("kind", KINDS)
def test_stream_yields_deltas_then_one_completion(kind: str, wire: WireServer, make_provider: MakeProvider) -> None:
    events = list(make_provider(kind).stream(REQUEST))

    *deltas, final = events
    assert len(deltas) >= 2 and all(isinstance(delta, TextDelta) for delta in deltas)
    assert isinstance(final, Completion)
    assert final.text == "".join(d.text for d in deltas if isinstance(d, TextDelta)) == "Hello, wire world!"
    assert (final.input_tokens, final.output_tokens, final.finish_reason) == (11, 7, "stop")
    [received] = wire.received
    assert received.body["stream"] is True
    if kind != "anthropic":
        assert received.body["stream_options"] == {"include_usage": True}


def test_anthropic_request_carries_model_limits_system_messages_and_key(
    wire: WireServer, make_provider: MakeProvider
) -> None:
    make_provider("anthropic").complete(REQUEST)

    [received] = wire.received
    assert received.body["max_tokens"] == 64
    assert received.body["system"] == "Answer briefly."
    assert received.body["messages"] == [
        {"role": "user", "content": "Name a switchyard."},
        {"role": "assistant", "content": "Which country?"},
        {"role": "user", "content": "Any."},
    ]
    assert "anthropic-version" in received.headers
    # The 2.x SDK sends the key as a bearer token; older ones used x-api-key.
    key = API_KEYS["anthropic"]
    assert received.headers.get("authorization") == f"Bearer {key}" or received.headers.get("x-api-key") == key
    assert received.headers.get("x-stainless-retry-count") == "0"


@pytest.mark.parametrize(
    ("kind", "limit_field"), [("openai", "max_completion_tokens"), ("openai_compatible", "max_tokens")]
)
def test_openai_request_carries_model_limits_system_messages_and_key(
    kind: str, limit_field: str, wire: WireServer, make_provider: MakeProvider
) -> None:
    make_provider(kind).complete(REQUEST)

    [received] = wire.received
    assert received.body[limit_field] == 64
    assert set(received.body) & {"max_tokens", "max_completion_tokens"} == {limit_field}
    assert received.body["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Name a switchyard."},
        {"role": "assistant", "content": "Which country?"},
        {"role": "user", "content": "Any."},
    ]
    assert received.headers["authorization"] == f"Bearer {API_KEYS[kind]}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_rate_limit_is_rate_limited_with_retry_after(
    kind: str, mode: Mode, wire: WireServer, make_provider: MakeProvider
) -> None:
    wire.script(Reply(status=429, retry_after="3", message="Too many requests"))

    with pytest.raises(RateLimited) as caught:
        call(make_provider(kind), mode)

    assert caught.value.retryable and caught.value.status == 429 and caught.value.retry_after == 3
    assert caught.value.code == "rate_limited"
    assert "Too many requests" in str(caught.value)
    assert len(wire.received) == 1  # the SDK did not retry: the Celery task does


@pytest.mark.parametrize("status", [500, 503])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_server_error_is_unavailable_and_not_retried_by_the_sdk(
    kind: str, mode: Mode, status: int, wire: WireServer, make_provider: MakeProvider
) -> None:
    wire.script(Reply(status=status))

    with pytest.raises(ProviderUnavailable) as caught:
        call(make_provider(kind), mode)

    assert caught.value.retryable and caught.value.status == status
    assert len(wire.received) == 1


def test_anthropic_overloaded_529_is_unavailable(wire: WireServer, make_provider: MakeProvider) -> None:
    wire.script(Reply(status=529, message="Overloaded"))

    with pytest.raises(ProviderUnavailable) as caught:
        make_provider("anthropic").complete(REQUEST)

    assert caught.value.status == 529 and "overloaded_error" in str(caught.value)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_request_is_rejected_and_not_retryable(
    kind: str, mode: Mode, wire: WireServer, make_provider: MakeProvider
) -> None:
    wire.script(Reply(status=400, message="max_tokens: too large"))

    with pytest.raises(ProviderRejected) as caught:
        call(make_provider(kind), mode)

    assert not caught.value.retryable and caught.value.status == 400 and caught.value.retry_after is None
    assert "max_tokens: too large" in str(caught.value)
    assert len(wire.received) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_error_messages_never_contain_the_api_key(kind: str, wire: WireServer, make_provider: MakeProvider) -> None:
    wire.script(Reply(status=401, message="Incorrect API key provided: {key}"))

    with pytest.raises(ProviderRejected) as caught:
        make_provider(kind).complete(REQUEST)

    key = API_KEYS[kind]
    assert key not in str(caught.value) and key not in repr(caught.value)
    assert "[redacted]" in str(caught.value)
    assert caught.value.__cause__ is None  # the SDK exception (with its request) is not chained


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_response_slower_than_the_timeout_is_unavailable(
    kind: str, mode: Mode, wire: WireServer, make_provider: MakeProvider
) -> None:
    wire.script(Reply(delay_s=10))
    started = time.monotonic()

    with pytest.raises(ProviderUnavailable) as caught:
        call(make_provider(kind, timeout=0.3), mode)

    assert time.monotonic() - started < 3
    assert caught.value.retryable and caught.value.code == "provider_timeout"
    assert len(wire.received) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_stream_that_stalls_half_way_times_out(kind: str, wire: WireServer, make_provider: MakeProvider) -> None:
    wire.script(Reply(stall_mid_stream=True))
    events: list[TextDelta | Completion] = []

    with pytest.raises(ProviderUnavailable) as caught:
        events.extend(make_provider(kind, timeout=0.3).stream(REQUEST))

    assert events == [TextDelta("Hello")]
    assert caught.value.code == "provider_timeout"


@pytest.mark.parametrize("kind", KINDS)
def test_error_event_in_the_middle_of_a_stream_is_unavailable(
    kind: str, wire: WireServer, make_provider: MakeProvider
) -> None:
    wire.script(Reply(fail_mid_stream=True))
    events: list[TextDelta | Completion] = []

    with pytest.raises(ProviderUnavailable) as caught:
        events.extend(make_provider(kind).stream(REQUEST))

    assert events == [TextDelta("Hello")]
    assert caught.value.retryable


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_connection_refused_is_unavailable(kind: str, mode: Mode, closed_port_url: str) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        call(build(kind, closed_port_url, timeout=2), mode)

    assert caught.value.retryable and caught.value.status is None
    assert caught.value.code == "provider_unavailable"


@pytest.mark.parametrize("kind", KINDS)
def test_stopping_a_stream_early_closes_it_quietly(kind: str, wire: WireServer, make_provider: MakeProvider) -> None:
    stream = make_provider(kind).stream(REQUEST)
    assert isinstance(stream, Generator)
    assert next(stream) == TextDelta("Hello")
    stream.close()  # e.g. the task was cancelled

    assert make_provider(kind).complete(REQUEST).text == "Hello, wire world!"  # the server is still fine


@pytest.mark.parametrize(
    ("mode", "stall"),
    [("complete", False), ("stream", False), ("stream", True)],
    ids=["complete", "stream-before-answer", "stream-mid-way"],
)
@pytest.mark.parametrize("kind", KINDS)
def test_soft_time_limit_passes_through_untranslated(
    kind: str, mode: Mode, stall: bool, wire: WireServer, make_provider: MakeProvider
) -> None:
    """Celery's soft limit must reach the task as itself, not as a retryable outage."""
    wire.script(Reply(stall_mid_stream=True) if stall else Reply(delay_s=10))
    started = time.monotonic()

    with pytest.raises(SoftTimeLimit), soft_time_limit(0.3):
        call(make_provider(kind), mode)

    assert time.monotonic() - started < 3
