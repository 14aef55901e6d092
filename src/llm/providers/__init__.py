"""The llm context's provider layer: one small interface (``base``), four implementations.

``get_provider()`` is the only place that reads Django settings; the provider classes
take plain arguments, and nothing here imports models or other contexts. The SDK
modules are imported lazily, so the fake provider (development, tests) never loads them.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from llm.providers.base import (
    Completion,
    CompletionRequest,
    Message,
    Provider,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    RateLimited,
    TextDelta,
)
from llm.providers.tokens import estimate_tokens

__all__ = [
    "PROVIDER_NAMES",
    "Completion",
    "CompletionRequest",
    "Message",
    "Provider",
    "ProviderError",
    "ProviderRejected",
    "ProviderUnavailable",
    "RateLimited",
    "TextDelta",
    "estimate_tokens",
    "get_provider",
]

PROVIDER_NAMES = ("fake", "anthropic", "openai", "openai_compatible")
# Local OpenAI-compatible servers usually ignore the key, but the SDK insists on one.
COMPATIBLE_PLACEHOLDER_KEY = "sk-no-key-required"


@dataclass(frozen=True, slots=True)
class _Config:
    name: str
    api_key: str = field(repr=False)
    base_url: str | None
    timeout: float
    latency_ms: int
    pid: int  # a forked worker builds its own client instead of sharing the parent's sockets


def get_provider(name: str | None = None) -> Provider:
    """The provider named by ``name`` (default ``LLM_PROVIDER``), built from settings.

    Cached per process and per configuration, so a changed setting (as in tests) gives
    a fresh provider rather than a stale one.
    """
    name = name or settings.LLM_PROVIDER
    if name not in PROVIDER_NAMES:
        raise ImproperlyConfigured(f"Unknown LLM provider {name!r}; expected one of {', '.join(PROVIDER_NAMES)}.")
    api_key = {"anthropic": settings.ANTHROPIC_API_KEY, "openai": settings.OPENAI_API_KEY}.get(name, "")
    if name == "openai_compatible":
        api_key = settings.OPENAI_API_KEY or COMPATIBLE_PLACEHOLDER_KEY
        if not settings.LLM_BASE_URL:
            raise ImproperlyConfigured("LLM_BASE_URL is required for the openai_compatible provider.")
    elif name != "fake" and not api_key:
        raise ImproperlyConfigured(f"An API key is required for the {name} provider.")
    config = _Config(
        name=name,
        api_key=api_key,
        base_url=settings.LLM_BASE_URL or None,
        timeout=float(settings.LLM_HTTP_TIMEOUT),
        latency_ms=int(settings.FAKE_LLM_LATENCY_MS),
        pid=os.getpid(),
    )
    return _build(config)


@functools.lru_cache(maxsize=16)
def _build(config: _Config) -> Provider:
    if config.name == "anthropic":
        from llm.providers.anthropic import AnthropicProvider

        return AnthropicProvider(api_key=config.api_key, base_url=config.base_url, timeout=config.timeout)
    if config.name in {"openai", "openai_compatible"}:
        from llm.providers.openai import OpenAIProvider

        return OpenAIProvider(
            api_key=config.api_key, base_url=config.base_url, timeout=config.timeout, name=config.name
        )
    from llm.providers.fake import FakeProvider

    return FakeProvider(latency_ms=config.latency_ms)
