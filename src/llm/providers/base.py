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
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol, Self

__all__ = [
    "CallAborted",
    "CallGuard",
    "Completion",
    "CompletionRequest",
    "Message",
    "Provider",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "RateLimited",
    "TextDelta",
    "current_guard",
    "error_for_status",
    "guarded",
    "parse_retry_after",
    "redact",
    "shutdown_response",
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


# ---------------------------------------------------------------------------------------
# Call guards: the per-attempt deadline and cancel, on any worker pool.
# ---------------------------------------------------------------------------------------
class CallAborted(Exception):
    """The call was stopped from outside: ``reason`` is ``timeout``, ``cancelled`` or
    ``lease_lost``. Not a ``ProviderError``: nothing went wrong at the provider."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CallGuard:
    """Lets another thread stop a provider call that is in progress.

    Celery's time limits work only in its prefork pool (they are signals), so the
    deadline lives in the call path instead: providers wait through ``sleep`` and check
    ``check`` between chunks, and ``abort`` runs the closers they registered (closing
    the HTTP response wakes a blocked read).
    """

    def __init__(self) -> None:
        self._aborted = threading.Event()
        self._lock = threading.Lock()
        self._closers: list[Callable[[], object]] = []
        self.reason: str | None = None

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def abort(self, reason: str) -> None:
        with self._lock:
            if self._aborted.is_set():
                return
            self.reason = reason
            self._aborted.set()
            closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except Exception:  # noqa: S112 - best effort: the reader sees the abort anyway
                continue

    def check(self) -> None:
        if self._aborted.is_set():
            raise CallAborted(self.reason or "aborted")

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or raise ``CallAborted`` as soon as the call is aborted."""
        if self._aborted.wait(max(seconds, 0.0)):
            raise CallAborted(self.reason or "aborted")

    def on_abort(self, close: Callable[[], object]) -> None:
        with self._lock:
            if not self._aborted.is_set():
                self._closers.append(close)
                return
        close()


def shutdown_response(response: object) -> None:
    """Wake a thread blocked reading ``response`` (an httpx-style response): shut its
    socket down, which interrupts a pending ``recv`` where a plain close does not."""
    stream = getattr(response, "extensions", {}).get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    close = getattr(response, "close", None)
    if close is not None:
        close()


_local = threading.local()
_UNGUARDED = CallGuard()  # never aborted: calls outside a worker (tests, shell) run unguarded


def current_guard() -> CallGuard:
    """The guard of the call running on this thread (an inert one outside a worker)."""
    guard: CallGuard | None = getattr(_local, "guard", None)
    return guard if guard is not None else _UNGUARDED


@contextmanager
def guarded(guard: CallGuard) -> Iterator[CallGuard]:
    """Make ``guard`` the current guard of this thread for the duration of a call."""
    previous = getattr(_local, "guard", None)
    _local.guard = guard
    try:
        yield guard
    finally:
        _local.guard = previous
