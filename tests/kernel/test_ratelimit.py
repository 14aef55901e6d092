"""kernel.ratelimit on real Redis: the library's strategies behind one small API, our
refund script against the library's sliding-window key layout, and fail-open."""

from __future__ import annotations

import time

import pytest
from django_redis import get_redis_connection
from structlog.testing import capture_logs

from kernel import ratelimit
from kernel.ratelimit import REDIS_DOWN_SKIP_S, Decision, Limiter, Strategy, most_restrictive

MOVING = Limiter("test-moving", Strategy.MOVING)
SLIDING = Limiter("test-sliding", Strategy.SLIDING)


def test_moving_window_is_exact_and_a_refusal_consumes_nothing() -> None:
    assert [MOVING.hit("a", limit=3, window_s=2).allowed for _ in range(5)] == [True, True, True, False, False]
    assert MOVING.test("a", limit=4, window_s=2).allowed  # the refusals left no entries
    assert MOVING.hit("b", limit=3, window_s=2).allowed  # another identifier, another counter


def test_moving_window_frees_as_hits_age_out() -> None:
    MOVING.hit("a", limit=2, window_s=1)
    time.sleep(0.5)
    MOVING.hit("a", limit=2, window_s=1)
    refused = MOVING.hit("a", limit=2, window_s=1)
    assert refused == Decision(False, 1)
    time.sleep(0.6)  # the first hit is older than the window now, the second is not
    assert MOVING.hit("a", limit=2, window_s=1).allowed
    assert not MOVING.hit("a", limit=2, window_s=1).allowed


def test_zero_is_unlimited_and_a_cost_above_the_limit_never_fits() -> None:
    assert all(MOVING.hit("a", limit=0).allowed for _ in range(50))
    assert SLIDING.hit("a", limit=100, cost=101) == Decision(False, 60)


def test_changing_a_limit_keeps_the_window() -> None:
    for _ in range(3):
        MOVING.hit("a", limit=10)
    assert not MOVING.hit("a", limit=3).allowed  # an override lowered to 3: already used up


def test_sliding_counter_takes_costs_and_adjusts_both_ways() -> None:
    assert SLIDING.hit("a", limit=1000, cost=600).allowed
    refused = SLIDING.hit("a", limit=1000, cost=600)
    assert not refused.allowed and 1 <= refused.retry_after_s <= 120
    SLIDING.adjust("a", delta=-500)  # the task used 100, not 600
    assert SLIDING.hit("a", limit=1000, cost=600).allowed  # 700 now
    SLIDING.adjust("a", delta=+400)  # another used 400 more than estimated: 1100
    assert not SLIDING.hit("a", limit=1000, cost=1).allowed
    SLIDING.adjust("a", delta=-5000)  # a refund never goes below zero
    assert SLIDING.hit("a", limit=1000, cost=1000).allowed
    assert not SLIDING.hit("a", limit=1000, cost=1).allowed


def test_adjust_writes_the_keys_the_library_reads() -> None:
    """The refund script follows the library's sliding-window key layout; if an upgrade
    changed it, the library would not see our adjustments and this would fail."""
    SLIDING.adjust("layout", delta=700)
    assert not SLIDING.hit("layout", limit=1000, cost=301).allowed
    assert SLIDING.hit("layout", limit=1000, cost=300).allowed
    keys = sorted(k.decode() for k in get_redis_connection("default").keys("*test-sliding/layout*"))
    assert len(keys) == 1 and keys[0].endswith(":rl:{test-sliding/layout}")


def test_adjust_is_only_for_sliding_counters() -> None:
    with pytest.raises(TypeError):
        MOVING.adjust("a", delta=1)


def test_most_restrictive() -> None:
    assert most_restrictive(Decision.allow(), Decision.allow()).allowed
    assert most_restrictive(Decision.allow(), Decision(False, 3), Decision(False, 9)) == Decision(False, 9)


def test_fails_open_and_skips_redis_for_a_while_when_it_is_down(settings) -> None:
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        }
    }
    with capture_logs() as logs:
        assert MOVING.hit("a", limit=1).allowed  # one timeout, then allowed
    # One warning line naming the error, without a traceback per request.
    assert [(e["event"], e["error"], "exc_info" in e) for e in logs] == [
        ("ratelimit_unavailable", "ConnectionError", False)
    ]
    # For the next REDIS_DOWN_SKIP_S the process does not try Redis (no timeout per call).
    assert ratelimit._backend().down_until > time.monotonic() + REDIS_DOWN_SKIP_S - 1
    assert all(MOVING.hit("a", limit=1).allowed for _ in range(20))
    assert SLIDING.hit("a", limit=1, cost=1).allowed
    SLIDING.adjust("a", delta=5)
