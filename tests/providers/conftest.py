"""Fixtures for the provider tests: a local wire-format server and providers pointed at it."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from llm.providers import COMPATIBLE_PLACEHOLDER_KEY, Provider
from llm.providers.anthropic import AnthropicProvider
from llm.providers.openai import OpenAIProvider
from tests.providers.wire import WireServer

KINDS = ["anthropic", "openai", "openai_compatible"]
API_KEYS = {
    "anthropic": "sk-ant-api03-wire-test-key-0123456789",
    "openai": "sk-proj-wire-test-key-0123456789",
    "openai_compatible": COMPATIBLE_PLACEHOLDER_KEY,
}
PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions", "openai_compatible": "/v1/chat/completions"}

MakeProvider = Callable[..., Provider]


@pytest.fixture(scope="session")
def _wire_server() -> Iterator[WireServer]:
    server = WireServer()
    yield server
    server.close()


@pytest.fixture
def wire(_wire_server: WireServer) -> WireServer:
    """The shared server, reset for this test (one server and one client per provider
    keep the suite fast: building an SDK client costs about 0.1 s)."""
    _wire_server.reset()
    return _wire_server


def build(kind: str, base_url: str, timeout: float = 5.0) -> Provider:
    """A provider of ``kind`` at ``base_url`` (the server root; OpenAI's clients add /v1)."""
    if kind == "anthropic":
        return AnthropicProvider(api_key=API_KEYS[kind], base_url=base_url, timeout=timeout)
    return OpenAIProvider(api_key=API_KEYS[kind], base_url=f"{base_url}/v1", timeout=timeout, name=kind)


_built: dict[tuple[str, str, float], Provider] = {}


@pytest.fixture
def make_provider(wire: WireServer) -> MakeProvider:
    def make(kind: str, *, timeout: float = 5.0) -> Provider:
        key = (kind, wire.url, timeout)
        if key not in _built:
            _built[key] = build(kind, wire.url, timeout)
        return _built[key]

    return make


@pytest.fixture
def closed_port_url() -> str:
    """An address where nothing listens: the port was free a moment ago and is closed again."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
