"""The reliability suite's servers: one throw-away PostgreSQL and one Redis for the whole
session (migrated once), owned by the tests so that scenarios can stop and restart them.
Each scenario starts its own processes over them (tests.reliability.stack.running)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.stack import Servers, create_api_key, migrate

MEASURED: list[str] = []  # recovery times, printed in the terminal summary


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    servers = Servers.start()
    try:
        migrate(servers)
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def api_key(servers: Servers) -> str:
    """One organization's key for every scenario: each counts only the tasks it submitted,
    and the production rate limits (600 requests a minute per key) leave room for them."""
    return create_api_key(servers, "reliability")


@pytest.fixture
def measured() -> list[str]:
    return MEASURED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("reliability: measured")
        for line in MEASURED:
            terminalreporter.write_line(line)
