"""The fake provider (SPEC §6): deterministic answers, latency, and the ``#fake:`` directives."""

from __future__ import annotations

import threading
import time

import pytest

from llm.providers import (
    Completion,
    CompletionRequest,
    Message,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    TextDelta,
)
from llm.providers.fake import HANG_STEP_S, Directives, FakeProvider
from llm.providers.tokens import estimate_tokens
from tests.providers.signals import SoftTimeLimit, soft_time_limit

MODELS = ["fake-small", "fake-large"]


class Clock:
    """An injected sleep that only records how long it was asked to sleep."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)

    @property
    def total(self) -> float:
        return sum(self.calls)


def request(
    prompt: str = "Describe a switchyard.",
    *,
    model: str = "fake-small",
    max_tokens: int = 256,
    attempt: int = 1,
    system: str | None = None,
) -> CompletionRequest:
    return CompletionRequest.from_prompt(prompt, model=model, max_tokens=max_tokens, attempt=attempt, system=system)


def streamed(provider: FakeProvider, req: CompletionRequest) -> tuple[list[TextDelta], Completion]:
    *deltas, final = list(provider.stream(req))
    assert all(isinstance(d, TextDelta) for d in deltas) and isinstance(final, Completion)
    return [d for d in deltas if isinstance(d, TextDelta)], final


@pytest.mark.parametrize("model", MODELS)
def test_same_prompt_and_model_give_the_same_answer(model: str) -> None:
    first = FakeProvider(latency_ms=0).complete(request(model=model))
    again = FakeProvider(latency_ms=0).complete(request(model=model))

    assert first == again and first.text and first.model == model
    assert FakeProvider(latency_ms=0).complete(request("Another prompt", model=model)).text != first.text


def test_models_answer_differently() -> None:
    small = FakeProvider(latency_ms=0).complete(request(model="fake-small"))
    large = FakeProvider(latency_ms=0).complete(request(model="fake-large"))
    assert small.text != large.text


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 5, 17, 64])
@pytest.mark.parametrize("model", MODELS)
def test_answer_never_exceeds_max_tokens(model: str, max_tokens: int) -> None:
    provider = FakeProvider(latency_ms=0)
    for n in range(20):
        completion = provider.complete(request(f"Prompt number {n}", model=model, max_tokens=max_tokens))
        assert estimate_tokens(completion.text) <= max_tokens
        assert completion.output_tokens <= max_tokens


def test_a_cut_answer_finishes_with_length() -> None:
    completion = FakeProvider(latency_ms=0).complete(request(model="fake-large", max_tokens=5))
    assert completion.finish_reason == "length"
    assert FakeProvider(latency_ms=0).complete(request(max_tokens=4096)).finish_reason == "stop"


def test_token_counts_come_from_the_estimate_of_system_and_messages() -> None:
    req = CompletionRequest(
        model="fake-small",
        messages=(Message("user", "First question"), Message("assistant", "An answer"), Message("user", "Next")),
        max_tokens=100,
        system="Be brief.",
    )
    completion = FakeProvider(latency_ms=0).complete(req)

    assert completion.input_tokens == estimate_tokens("Be brief.\nFirst question\nAn answer\nNext")
    assert completion.output_tokens == estimate_tokens(completion.text)
    assert FakeProvider(latency_ms=0).complete(request("x" * 400)).input_tokens == 100


def test_complete_takes_the_configured_latency() -> None:
    clock = Clock()
    FakeProvider(latency_ms=800, sleep=clock).complete(request())
    assert clock.total == pytest.approx(0.8)


@pytest.mark.parametrize("model", MODELS)
def test_stream_chunks_join_to_the_complete_text_and_spread_the_latency(model: str) -> None:
    clock = Clock()
    provider = FakeProvider(latency_ms=800, sleep=clock)

    deltas, final = streamed(provider, request(model=model))

    assert len(deltas) >= 2
    assert (
        "".join(d.text for d in deltas) == final.text == FakeProvider(latency_ms=0).complete(request(model=model)).text
    )
    assert len(clock.calls) == len(deltas) and clock.total == pytest.approx(0.8)


@pytest.mark.parametrize("stream", [False, True])
def test_sleep_directive_takes_that_long_with_the_injected_sleep(stream: bool) -> None:
    clock = Clock()
    provider = FakeProvider(latency_ms=800, sleep=clock)
    req = request("Slow one #fake:sleep=2500 please")

    _ = streamed(provider, req) if stream else provider.complete(req)

    assert clock.total == pytest.approx(2.5)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_rate_limit_directive_fails_the_first_attempts_then_succeeds(model: str, stream: bool) -> None:
    provider = FakeProvider(latency_ms=0)

    def run(attempt: int) -> Completion:
        req = request("Busy #fake:error=429:2", model=model, attempt=attempt)
        return streamed(provider, req)[1] if stream else provider.complete(req)

    for attempt in (1, 2):
        with pytest.raises(RateLimited) as caught:
            run(attempt)
        assert caught.value.retry_after == 1 and caught.value.status == 429 and caught.value.retryable
    assert run(3).text


@pytest.mark.parametrize("stream", [False, True])
def test_error_without_count_fails_every_attempt(stream: bool) -> None:
    provider = FakeProvider(latency_ms=0)
    for attempt in range(1, 6):
        req = request("Bad #fake:error=400", attempt=attempt)
        with pytest.raises(ProviderRejected) as caught:
            _ = streamed(provider, req) if stream else provider.complete(req)
        assert not caught.value.retryable and caught.value.status == 400 and caught.value.retry_after is None


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, ProviderUnavailable), (503, ProviderUnavailable), (404, ProviderRejected), (529, ProviderUnavailable)],
)
def test_error_directive_maps_the_status_like_a_real_provider(status: int, error: type[ProviderError]) -> None:
    provider = FakeProvider(latency_ms=0)
    with pytest.raises(error) as caught:
        provider.complete(request(f"#fake:error={status}:1"))
    assert type(caught.value) is error and caught.value.status == status
    assert provider.complete(request(f"#fake:error={status}:1", attempt=2)).text


def test_error_after_sleep_sleeps_first() -> None:
    clock = Clock()
    with pytest.raises(ProviderUnavailable):
        FakeProvider(latency_ms=800, sleep=clock).complete(request("#fake:sleep=300 #fake:error=503"))
    assert clock.total == pytest.approx(0.3)


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_directive_reports_those_counts(stream: bool) -> None:
    provider = FakeProvider(latency_ms=0)
    req = request("Count me #fake:tokens=1234,567", model="fake-large")
    completion = streamed(provider, req)[1] if stream else provider.complete(req)
    assert (completion.input_tokens, completion.output_tokens) == (1234, 567)


class _Interrupted(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded, raised from a signal handler."""


@pytest.mark.parametrize("stream", [False, True])
def test_hang_never_answers_but_can_be_interrupted(stream: bool) -> None:
    calls: list[float] = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) >= 5:
            raise _Interrupted

    provider = FakeProvider(latency_ms=0, sleep=sleep)
    outcome: list[BaseException] = []

    def target() -> None:
        req = request("Wait forever #fake:hang")
        try:
            _ = list(provider.stream(req)) if stream else provider.complete(req)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=5)

    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], _Interrupted)
    assert calls == [HANG_STEP_S] * 5 and HANG_STEP_S <= 0.1  # short sleeps: a signal gets in quickly


def test_directives_count_only_in_the_last_user_message() -> None:
    req = CompletionRequest(
        model="fake-small",
        messages=(
            Message("user", "Earlier #fake:error=400"),
            Message("assistant", "#fake:error=500"),
            Message("user", "Now answer"),
        ),
        max_tokens=64,
    )
    assert FakeProvider(latency_ms=0).complete(req).text


@pytest.mark.parametrize(
    "prompt",
    [
        "#fake:sleep=fast",
        "#fake:sleep=10ms",
        "#fake:error=42",
        "#fake:error=700",
        "#fake:error=abc",
        "#fake:tokens=1",
        "#fake:tokens=1,2,3",
        "#fake:hangover",
        "#fake:explode",
        "#fake:",
        "#fake:error=429:x",
    ],
)
def test_unknown_or_garbled_directives_are_ignored(prompt: str) -> None:
    clock = Clock()
    assert Directives.parse(prompt) == Directives()
    completion = FakeProvider(latency_ms=100, sleep=clock).complete(request(f"Hello {prompt} there"))
    assert completion.text and clock.total == pytest.approx(0.1)
    assert completion.input_tokens == estimate_tokens(f"Hello {prompt} there")


def test_directive_parsing() -> None:
    parsed = Directives.parse("a #fake:error=503:2, then #fake:sleep=5 and #fake:tokens=3,4 #fake:hang.")
    assert parsed == Directives(sleep_ms=5, error_status=503, error_attempts=2, hang=True, tokens=(3, 4))
    assert Directives.parse("#fake:sleep=1 #fake:sleep=2").sleep_ms == 2  # the last one wins
    assert Directives.parse("#fake:error=429:0").fails_on(1) is False


@pytest.mark.parametrize("stream", [False, True])
def test_hang_with_real_sleep_yields_to_a_signal_quickly(stream: bool) -> None:
    provider = FakeProvider(latency_ms=0)  # time.sleep: as on a Celery worker
    req = request("Wait forever #fake:hang")
    started = time.monotonic()

    with pytest.raises(SoftTimeLimit), soft_time_limit(0.2):
        _ = list(provider.stream(req)) if stream else provider.complete(req)

    assert time.monotonic() - started < 1


def test_malformed_ends_the_stream_without_its_final_message_on_the_first_attempts() -> None:
    from llm.providers.base import Completion, CompletionRequest, ProviderUnavailable
    from llm.providers.fake import FakeProvider

    provider = FakeProvider(latency_ms=0)
    first = CompletionRequest.from_prompt("Broken once #fake:malformed:1", model="fake-small", max_tokens=50)
    events = list(provider.stream(first))
    assert events and not any(isinstance(e, Completion) for e in events)
    with pytest.raises(ProviderUnavailable):
        provider.complete(first)
    second = CompletionRequest.from_prompt(
        "Broken once #fake:malformed:1", model="fake-small", max_tokens=50, attempt=2
    )
    assert isinstance(list(provider.stream(second))[-1], Completion)
