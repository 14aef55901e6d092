"""The provider interface: request validation, error mapping, Retry-After, redaction, tokens."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from llm.providers import (
    CompletionRequest,
    Message,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    estimate_tokens,
)
from llm.providers.base import error_for_status, parse_retry_after, redact
from llm.providers.tokens import estimate_prompt_tokens


def test_from_prompt_builds_one_user_message() -> None:
    req = CompletionRequest.from_prompt("Hi", model="m", max_tokens=5, system="s", attempt=2)
    assert req == CompletionRequest(model="m", messages=(Message("user", "Hi"),), max_tokens=5, system="s", attempt=2)


@pytest.mark.parametrize("kwargs", [{"max_tokens": 0}, {"attempt": 0}, {"messages": ()}])
def test_invalid_requests_are_refused(kwargs: dict[str, object]) -> None:
    values: dict[str, object] = {"model": "m", "messages": (Message("user", "Hi"),), "max_tokens": 5} | kwargs
    with pytest.raises(ValueError, match=r"max_tokens|attempt|message"):
        CompletionRequest(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (429, RateLimited, True),
        (500, ProviderUnavailable, True),
        (502, ProviderUnavailable, True),
        (503, ProviderUnavailable, True),
        (529, ProviderUnavailable, True),
        (408, ProviderUnavailable, True),
        (400, ProviderRejected, False),
        (401, ProviderRejected, False),
        (404, ProviderRejected, False),
        (422, ProviderRejected, False),
    ],
)
def test_status_maps_to_error_class(status: int, cls: type[ProviderError], retryable: bool) -> None:
    error = error_for_status(status, "boom", retry_after=2.0)
    assert type(error) is cls and error.retryable is retryable and error.status == status
    assert error.retry_after == (None if cls is ProviderRejected else 2.0)


def test_a_bare_provider_error_is_retryable_with_a_generic_code() -> None:
    error = ProviderError("The provider ended the stream without a result.")
    assert error.retryable and error.code == "provider_error" and error.status is None and error.retry_after is None


def test_errors_survive_pickling() -> None:
    error = RateLimited("slow down", status=429, retry_after=3.0)
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is RateLimited and str(copy) == "slow down"
    assert (copy.status, copy.retry_after, copy.code, copy.retryable) == (429, 3.0, "rate_limited", True)


def test_retry_after_forms() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "3"}) == 0.25
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({"retry-after": "-4"}) == 0
    assert parse_retry_after({}) is None and parse_retry_after(None) is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < (parse_retry_after({"retry-after": later}) or 0) <= 30


def test_redact_removes_keys_and_key_like_tokens() -> None:
    text = redact("bad key sk-live-abcdef123456 and my-secret-value", ["my-secret-value"])
    assert text == "bad key [redacted] and [redacted]"
    assert redact("Incorrect API key provided: sk-proj-****************abcd.") == (
        "Incorrect API key provided: [redacted]."
    )


@pytest.mark.parametrize(("text", "tokens"), [("", 1), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 400, 100)])
def test_estimate_is_about_four_characters_per_token(text: str, tokens: int) -> None:
    assert estimate_tokens(text) == tokens


def test_prompt_estimate_matches_a_single_prompt_and_joins_parts() -> None:
    assert estimate_prompt_tokens(["", "abcdefgh"]) == estimate_tokens("abcdefgh")
    assert estimate_prompt_tokens(["abc", "defg"]) == estimate_tokens("abc\ndefg")
