"""get_provider(): the one place that turns settings into a provider."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from pytest_django.fixtures import Settings

from llm.providers import COMPATIBLE_PLACEHOLDER_KEY, CompletionRequest, get_provider
from llm.providers.anthropic import AnthropicProvider
from llm.providers.fake import FakeProvider
from llm.providers.openai import OpenAIProvider
from tests.providers.wire import WireServer


def test_fake_is_built_with_the_configured_latency(settings: Settings) -> None:
    settings.LLM_PROVIDER = "fake"
    settings.FAKE_LLM_LATENCY_MS = 123

    provider = get_provider()

    assert isinstance(provider, FakeProvider) and provider.name == "fake" and provider.latency_ms == 123


@pytest.mark.parametrize(
    ("name", "cls"),
    [("anthropic", AnthropicProvider), ("openai", OpenAIProvider), ("openai_compatible", OpenAIProvider)],
)
def test_each_llm_provider_setting_builds_its_class(settings: Settings, name: str, cls: type) -> None:
    settings.LLM_PROVIDER = name
    settings.ANTHROPIC_API_KEY = "sk-ant-settings-key"
    settings.OPENAI_API_KEY = "sk-settings-key"
    settings.LLM_BASE_URL = "http://127.0.0.1:9/v1"

    provider = get_provider()

    assert isinstance(provider, cls) and provider.name == name


def test_provider_is_cached_until_a_setting_changes(settings: Settings) -> None:
    settings.LLM_PROVIDER = "fake"
    settings.FAKE_LLM_LATENCY_MS = 5
    first = get_provider()
    assert get_provider() is first and get_provider("fake") is first

    settings.FAKE_LLM_LATENCY_MS = 6
    assert get_provider() is not first


def test_a_named_provider_overrides_the_setting(settings: Settings) -> None:
    settings.LLM_PROVIDER = "fake"
    settings.ANTHROPIC_API_KEY = "sk-ant-settings-key"
    assert isinstance(get_provider("anthropic"), AnthropicProvider)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("anthropic", {"ANTHROPIC_API_KEY": ""}),
        ("openai", {"OPENAI_API_KEY": ""}),
        ("openai_compatible", {"LLM_BASE_URL": ""}),
        ("gemini", {}),
    ],
)
def test_missing_configuration_is_reported_clearly(settings: Settings, name: str, overrides: dict[str, str]) -> None:
    for key, value in overrides.items():
        setattr(settings, key, value)
    with pytest.raises(ImproperlyConfigured):
        get_provider(name)


def test_openai_compatible_talks_to_llm_base_url_with_a_placeholder_key(settings: Settings, wire: WireServer) -> None:
    settings.LLM_PROVIDER = "openai_compatible"
    settings.OPENAI_API_KEY = ""
    settings.LLM_BASE_URL = f"{wire.url}/v1"

    completion = get_provider().complete(CompletionRequest.from_prompt("Hi", model="llama3", max_tokens=8))

    assert completion.text == wire.text
    [received] = wire.received
    assert received.headers["authorization"] == f"Bearer {COMPATIBLE_PLACEHOLDER_KEY}"
    assert received.body["max_tokens"] == 8 and "max_completion_tokens" not in received.body


def test_http_timeout_comes_from_settings(settings: Settings, wire: WireServer) -> None:
    from llm.providers import ProviderUnavailable
    from tests.providers.wire import Reply

    settings.ANTHROPIC_API_KEY = "sk-ant-settings-key"
    settings.LLM_BASE_URL = wire.url
    settings.LLM_HTTP_TIMEOUT = 0.2
    wire.script(Reply(delay_s=5))

    with pytest.raises(ProviderUnavailable):
        get_provider("anthropic").complete(CompletionRequest.from_prompt("Hi", model="claude-x", max_tokens=8))
