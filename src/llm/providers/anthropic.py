"""Anthropic's Messages API through the official ``anthropic`` SDK.

The SDK never retries (``max_retries=0``): retries belong to the Celery task, which
backs off and honours ``Retry-After`` (SPEC §5). Every SDK error leaves this module as
a ``ProviderError`` whose message names the status and the provider's own explanation,
with API keys redacted; the SDK exception is not chained, because its text and request
object carry more than we want in logs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeGuard

import anthropic
import httpx2
from anthropic.types import (
    MessageParam,
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    TextBlock,
    Usage,
)
from anthropic.types import TextDelta as AnthropicTextDelta

from llm.providers.base import (
    Completion,
    CompletionRequest,
    ProviderError,
    ProviderUnavailable,
    TextDelta,
    current_guard,
    error_for_status,
    parse_retry_after,
    redact,
    shutdown_response,
)

# An ``error`` event inside a 200 stream carries only a type; these are its statuses.
_ERROR_TYPE_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, api_key: str, base_url: str | None, timeout: float) -> None:
        if not api_key:
            raise ValueError("AnthropicProvider needs an API key.")
        self._api_key = api_key
        self._client = anthropic.Anthropic(api_key=api_key, base_url=base_url or None, timeout=timeout, max_retries=0)

    def complete(self, request: CompletionRequest) -> Completion:
        with self._translated_errors():
            message = self._client.messages.create(
                model=request.model,
                max_tokens=request.max_tokens,
                messages=_messages(request),
                system=request.system if request.system is not None else anthropic.omit,
            )
        return Completion(
            text="".join(block.text for block in message.content if isinstance(block, TextBlock)),
            input_tokens=_input_tokens(message.usage),
            output_tokens=message.usage.output_tokens,
            model=message.model,
            finish_reason=_finish_reason(message.stop_reason),
        )

    def stream(self, request: CompletionRequest) -> Iterator[TextDelta | Completion]:
        parts: list[str] = []
        model, input_tokens, output_tokens, stop_reason = request.model, 0, 0, None
        with self._translated_errors():
            events = self._client.messages.create(
                model=request.model,
                max_tokens=request.max_tokens,
                messages=_messages(request),
                system=request.system if request.system is not None else anthropic.omit,
                stream=True,
            )
            guard = current_guard()
            guard.on_abort(lambda: shutdown_response(events.response))
            with events:  # closes the connection if the consumer stops early
                for event in events:
                    guard.check()
                    if isinstance(event, RawMessageStartEvent):
                        model = event.message.model
                        input_tokens = _input_tokens(event.message.usage)
                        output_tokens = event.message.usage.output_tokens
                    elif isinstance(event, RawContentBlockDeltaEvent) and isinstance(event.delta, AnthropicTextDelta):
                        parts.append(event.delta.text)
                        yield TextDelta(event.delta.text)
                    elif isinstance(event, RawMessageDeltaEvent):
                        # message_delta usage is cumulative; input counts appear only if they changed.
                        output_tokens = event.usage.output_tokens
                        if event.usage.input_tokens is not None:
                            input_tokens = (
                                event.usage.input_tokens
                                + (event.usage.cache_creation_input_tokens or 0)
                                + (event.usage.cache_read_input_tokens or 0)
                            )
                        stop_reason = event.delta.stop_reason or stop_reason
        yield Completion(
            text="".join(parts),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            model=model,
            finish_reason=_finish_reason(stop_reason),
        )

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except anthropic.APIError as exc:
            cause = exc.__cause__
            if isinstance(exc, anthropic.APIConnectionError) and _foreign(cause):
                # This SDK wraps *any* exception raised while sending as a connection error,
                # including Celery's SoftTimeLimitExceeded from its signal handler: let that
                # one through, so the task fails as timed out instead of retrying an "outage".
                raise cause from None
            raise translate_error(exc, secrets=(self._api_key,)) from None
        except httpx2.TimeoutException:
            # Unlike the OpenAI SDK, this one lets read errors in the middle of a stream
            # escape as the HTTP client's own exceptions.
            raise ProviderUnavailable("anthropic: the stream timed out.", code="provider_timeout") from None
        except httpx2.TransportError as exc:
            raise ProviderUnavailable(f"anthropic: the connection failed mid-stream ({type(exc).__name__}).") from None


def translate_error(exc: anthropic.APIError, *, secrets: tuple[str, ...] = ()) -> ProviderError:
    """Map an SDK exception to ours (SPEC §5): 429 → RateLimited, 5xx/529/timeouts/
    connection errors → ProviderUnavailable, other 4xx → ProviderRejected."""
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderUnavailable("anthropic: the request timed out.", code="provider_timeout")
    if isinstance(exc, anthropic.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
        return ProviderUnavailable(f"anthropic: could not reach the API ({cause}).")
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        if status < 400:  # an ``error`` event after the stream had started with 200
            status = _ERROR_TYPE_STATUS.get(str(exc.type), 500)
        detail = exc.api_message or "no details"
        kind = f" {exc.type}" if exc.type else ""
        request_id = f" (request id {exc.request_id})" if exc.request_id else ""
        message = redact(f"anthropic: HTTP {status}{kind}: {detail[:300]}{request_id}", secrets)
        return error_for_status(status, message, retry_after=parse_retry_after(exc.response.headers))
    # A response we could not parse, or an error without a status: treat as an outage.
    return ProviderUnavailable(redact(f"anthropic: unexpected API response ({type(exc).__name__}).", secrets))


def _foreign(cause: BaseException | None) -> TypeGuard[BaseException]:
    """True for an exception that is no network failure (and so not ours to translate)."""
    return cause is not None and not isinstance(cause, httpx2.HTTPError | OSError | anthropic.AnthropicError)


def _messages(request: CompletionRequest) -> list[MessageParam]:
    messages: list[MessageParam] = []
    for m in request.messages:
        if m.role == "user":
            messages.append({"role": "user", "content": m.content})
        else:
            messages.append({"role": "assistant", "content": m.content})
    return messages


def _input_tokens(usage: Usage) -> int:
    # Cached prompt tokens are billed input too.
    return usage.input_tokens + (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0)


def _finish_reason(stop_reason: str | None) -> str:
    if stop_reason is None:
        return "stop"
    return _FINISH_REASONS.get(stop_reason, stop_reason)
