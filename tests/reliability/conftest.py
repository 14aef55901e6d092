"""The reliability suite's servers: one throw-away PostgreSQL and one Redis for the whole
session (migrated once), owned by the tests so that scenarios can stop and restart them.
Each scenario starts its own processes over them (tests.reliability.stack.running)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.stack import Servers, migrate

MEASURED: list[str] = []  # recovery times, printed in the terminal summary


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    servers = Servers.start()
    try:
        migrate(servers)
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def measured() -> list[str]:
    return MEASURED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("reliability: measured")
        for line in MEASURED:
            terminalreporter.write_line(line)
