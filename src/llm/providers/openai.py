"""OpenAI Chat Completions through the official ``openai`` SDK, for OpenAI itself and for
OpenAI-compatible servers (vLLM, Ollama, llama.cpp) under the name ``openai_compatible``.

As with Anthropic, the SDK never retries (``max_retries=0``; the Celery task does) and
every SDK error leaves as a ``ProviderError`` with API keys redacted and the SDK
exception unchained. OpenAI itself gets ``max_completion_tokens`` (``max_tokens`` is
deprecated there and refused by reasoning models); compatible servers get
``max_tokens``, which all of them understand. Servers that report no usage get the
tokenizer estimate instead, so a task is never charged zero by accident.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import openai
from openai.types.chat import ChatCompletionMessageParam

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
from llm.providers.tokens import estimate_prompt_tokens, estimate_tokens


class OpenAIProvider:
    def __init__(self, api_key: str, base_url: str | None, timeout: float, name: str = "openai") -> None:
        if not api_key:
            raise ValueError(f"{name}: OpenAIProvider needs an API key (any placeholder for local servers).")
        self.name = name
        self._api_key = api_key
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url or None, timeout=timeout, max_retries=0)

    def complete(self, request: CompletionRequest) -> Completion:
        with self._translated_errors():
            response = self._client.chat.completions.create(
                model=request.model,
                messages=self._messages(request),
                stream=False,
                max_tokens=self._max_tokens(request),
                max_completion_tokens=self._max_completion_tokens(request),
            )
        if not response.choices:
            raise ProviderUnavailable(f"{self.name}: the response had no choices.")
        choice = response.choices[0]
        text = choice.message.content or ""
        usage = response.usage
        return Completion(
            text=text,
            input_tokens=usage.prompt_tokens if usage else _estimate_input(request),
            output_tokens=usage.completion_tokens if usage else estimate_tokens(text),
            model=response.model or request.model,
            finish_reason=choice.finish_reason or "stop",
        )

    def stream(self, request: CompletionRequest) -> Iterator[TextDelta | Completion]:
        parts: list[str] = []
        model, finish_reason = request.model, "stop"
        input_tokens: int | None = None
        output_tokens: int | None = None
        with self._translated_errors():
            chunks = self._client.chat.completions.create(
                model=request.model,
                messages=self._messages(request),
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=self._max_tokens(request),
                max_completion_tokens=self._max_completion_tokens(request),
            )
            guard = current_guard()
            guard.on_abort(lambda: shutdown_response(chunks.response))
            with chunks:  # closes the connection if the consumer stops early
                for chunk in chunks:
                    guard.check()
                    model = chunk.model or model
                    if chunk.usage is not None:  # the last chunk, with no choices
                        input_tokens, output_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
                    for choice in chunk.choices[:1]:
                        if choice.delta.content:
                            parts.append(choice.delta.content)
                            yield TextDelta(choice.delta.content)
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
        text = "".join(parts)
        yield Completion(
            text=text,
            input_tokens=input_tokens if input_tokens is not None else _estimate_input(request),
            output_tokens=output_tokens if output_tokens is not None else estimate_tokens(text),
            model=model,
            finish_reason=finish_reason,
        )

    def _messages(self, request: CompletionRequest) -> list[ChatCompletionMessageParam]:
        messages: list[ChatCompletionMessageParam] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        for m in request.messages:
            if m.role == "user":
                messages.append({"role": "user", "content": m.content})
            else:
                messages.append({"role": "assistant", "content": m.content})
        return messages

    def _max_tokens(self, request: CompletionRequest) -> int | openai.Omit:
        return openai.omit if self.name == "openai" else request.max_tokens

    def _max_completion_tokens(self, request: CompletionRequest) -> int | openai.Omit:
        return request.max_tokens if self.name == "openai" else openai.omit

    @contextmanager
    def _translated_errors(self) -> Iterator[None]:
        try:
            yield
        except openai.APIError as exc:
            raise translate_error(exc, provider=self.name, secrets=(self._api_key,)) from None


def translate_error(exc: openai.APIError, *, provider: str = "openai", secrets: tuple[str, ...] = ()) -> ProviderError:
    """Map an SDK exception to ours (SPEC §5): 429 → RateLimited, 5xx/timeouts/connection
    errors → ProviderUnavailable, other 4xx → ProviderRejected."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderUnavailable(f"{provider}: the request timed out.", code="provider_timeout")
    if isinstance(exc, openai.APIConnectionError):
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "connection error"
        return ProviderUnavailable(f"{provider}: could not reach the API ({cause}).")
    detail = _body_message(exc.body) or "no details"
    kind = f" {exc.code or exc.type}" if (exc.code or exc.type) else ""
    if isinstance(exc, openai.APIStatusError):
        request_id = f" (request id {exc.request_id})" if exc.request_id else ""
        message = redact(f"{provider}: HTTP {exc.status_code}{kind}: {detail[:300]}{request_id}", secrets)
        return error_for_status(exc.status_code, message, retry_after=parse_retry_after(exc.response.headers))
    # An error object inside a 200 stream, or a response we could not parse: an outage.
    return ProviderUnavailable(redact(f"{provider}: error from the API{kind}: {detail[:300]}", secrets))


def _body_message(body: object) -> str | None:
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
    if isinstance(body, str) and body:
        return body
    return None


def _estimate_input(request: CompletionRequest) -> int:
    return estimate_prompt_tokens([request.system or "", *(m.content for m in request.messages)])
