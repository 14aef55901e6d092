"""The provider interface: what the llm context asks of a language model, and how it fails.

Every provider (fake, Anthropic, OpenAI, OpenAI-compatible servers) takes a
``CompletionRequest`` and answers with a ``Completion``, either at once (``complete``)
or as ``TextDelta`` chunks followed by exactly one ``Completion`` (``stream``). Every
failure is a ``ProviderError`` whose ``retryable`` flag tells the Celery task what to do
(SPEC §5): rate limits, outages and timeouts are retried; other client errors fail.

This module is plain Python: it must not import Django, the SDKs or other contexts.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, Self

__all__ = [
    "Completion",
    "CompletionRequest",
    "Message",
    "Provider",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "RateLimited",
    "TextDelta",
    "error_for_status",
    "parse_retry_after",
    "redact",
]


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """One call to a model. ``attempt`` is 1-based (the task's attempt counter)."""

    model: str
    messages: tuple[Message, ...]
    max_tokens: int
    system: str | None = None
    attempt: int = 1

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("A completion request needs at least one message.")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 (got {self.max_tokens}).")
        if self.attempt < 1:
            raise ValueError(f"attempt is 1-based (got {self.attempt}).")

    @classmethod
    def from_prompt(
        cls, prompt: str, *, model: str, max_tokens: int, system: str | None = None, attempt: int = 1
    ) -> Self:
        return cls(
            model=model,
            messages=(Message(role="user", content=prompt),),
            max_tokens=max_tokens,
            system=system,
            attempt=attempt,
        )

    @property
    def last_user_message(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""


@dataclass(frozen=True, slots=True)
class Completion:
    """The whole answer. ``finish_reason`` is ``stop`` or ``length`` when the provider
    says so in its own words (``end_turn``, ``max_tokens``…); other reasons pass through."""

    text: str
    input_tokens: int
    output_tokens: int
    model: str
    finish_reason: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


class Provider(Protocol):
    name: str

    def complete(self, request: CompletionRequest) -> Completion: ...

    def stream(self, request: CompletionRequest) -> Iterator[TextDelta | Completion]:
        """Yield text chunks, then exactly one ``Completion`` with the full text and usage."""
        ...


class ProviderError(Exception):
    """A provider call failed. Unknown failures count as transient (``retryable``)."""

    retryable: bool = True
    code: str = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        code: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments do not survive the default exception pickling.
        return (
            _rebuild_error,
            (type(self), self.message, self.status, self.retry_after, self.code, self.retryable),
        )


def _rebuild_error(
    cls: type[ProviderError], message: str, status: int | None, retry_after: float | None, code: str, retryable: bool
) -> ProviderError:
    return cls(message, status=status, retry_after=retry_after, code=code, retryable=retryable)


class RateLimited(ProviderError):
    """HTTP 429: try again later, no sooner than ``retry_after`` seconds when given."""

    retryable = True
    code = "rate_limited"


class ProviderUnavailable(ProviderError):
    """HTTP 5xx (and 408), timeouts and connection errors: the provider may recover."""

    retryable = True
    code = "provider_unavailable"


class ProviderRejected(ProviderError):
    """Any other 4xx: the request itself is wrong, so retrying cannot help."""

    retryable = False
    code = "provider_rejected"


def error_for_status(status: int, message: str, *, retry_after: float | None = None) -> ProviderError:
    """The one mapping from an HTTP status to our error classes (SPEC §5)."""
    if status == 429:
        return RateLimited(message, status=status, retry_after=retry_after)
    # 408 Request Timeout is a timeout by another name; the SDKs retry it too.
    if status >= 500 or status == 408:
        return ProviderUnavailable(message, status=status, retry_after=retry_after)
    return ProviderRejected(message, status=status)


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` (seconds or HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            pass
        else:
            if math.isfinite(value) and value >= 0:
                return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


# Secret-looking tokens (sk-…, sk-ant-…, key-…); providers sometimes echo part of the key.
_KEY_LIKE = re.compile(r"\b(?:sk|key|rk|pk)-[A-Za-z0-9_\-*]{6,}")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove API keys from text bound for error messages and logs."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)
