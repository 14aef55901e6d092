"""The circuit breaker per provider model, in the real Redis (shared by every worker)."""

from __future__ import annotations

import threading
import time

import pytest

from llm import breaker


@pytest.fixture(autouse=True)
def _small_breaker(settings) -> None:
    settings.LLM_BREAKER_FAILURES = 3
    settings.LLM_BREAKER_WINDOW_S = 60
    settings.LLM_BREAKER_COOLDOWN_S = 1


def test_opens_after_n_failures_then_one_probe_decides() -> None:
    for _ in range(2):
        assert breaker.record_failure("fake-small") is False
    assert breaker.state("fake-small") == "closed" and breaker.allow("fake-small")
    assert breaker.record_failure("fake-small") is True
    assert breaker.state("fake-small") == "open"
    assert not breaker.allow("fake-small")
    assert breaker.allow("fake-large")  # per model
    time.sleep(1.2)  # the cool-down
    assert breaker.state("fake-small") == "half_open"
    # Of many callers at once, exactly one gets the probe.
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(breaker.allow("fake-small"))) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 9 + [True]
    # The probe failed: open again at once (no N failures needed).
    assert breaker.record_failure("fake-small") is True
    assert breaker.state("fake-small") == "open"
    time.sleep(1.2)
    assert breaker.allow("fake-small")  # the next probe
    breaker.record_success("fake-small")
    assert breaker.state("fake-small") == "closed"
    assert all(breaker.allow("fake-small") for _ in range(3))


def test_production_defaults_are_sane(settings) -> None:
    from config import settings as production

    assert production.LLM_BREAKER_FAILURES == 5
    assert production.LLM_BREAKER_WINDOW_S == 60 and production.LLM_BREAKER_COOLDOWN_S == 30


def test_a_redis_outage_leaves_the_breaker_closed(settings) -> None:
    for _ in range(3):
        breaker.record_failure("fake-small")
    assert not breaker.allow("fake-small")  # open, in the live Redis
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"}}
    # Redis unreachable: calls go to the model as without a breaker, and nothing raises.
    assert breaker.allow("fake-small") is True
    assert breaker.record_failure("fake-small") is False
    assert breaker.state("fake-small") == "closed"
    breaker.record_success("fake-small")
