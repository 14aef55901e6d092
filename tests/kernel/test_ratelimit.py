"""kernel.ratelimit on real Redis: the library's strategies behind one small API, our
refund script against the library's sliding-window key layout, and fail-open."""

from __future__ import annotations

import time

import pytest
from django_redis import get_redis_connection
from redis import Redis
from structlog.testing import capture_logs

from kernel import ratelimit
from kernel.ratelimit import REDIS_DOWN_SKIP_S, Decision, Hit, Limiter, Strategy, most_restrictive

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


# --- several limits in one round trip (hit_all) ---------------------------------------------

OTHER = Limiter("test-moving-other", Strategy.MOVING)
OTHER_SLIDING = Limiter("test-sliding-other", Strategy.SLIDING)


@pytest.fixture
def redis_commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commands the process sends to Redis (one entry per round trip)."""
    sent: list[str] = []
    original = Redis.execute_command

    def counting(self: Redis, *args: object, **options: object) -> object:
        sent.append(str(args[0]))
        return original(self, *args, **options)

    monkeypatch.setattr(Redis, "execute_command", counting)
    return sent


def test_hit_all_checks_two_limits_in_one_round_trip(redis_commands: list[str]) -> None:
    ratelimit.hit_all(Hit(MOVING, "warm", limit=3), all_or_nothing=False)  # loads the script once
    MOVING.hit("warm", limit=3)
    OTHER.hit("warm", limit=3)
    assert len(redis_commands) >= 3  # one round trip per single limit
    redis_commands.clear()
    decision = ratelimit.hit_all(
        Hit(MOVING, "a", limit=3), Hit(OTHER, "a", limit=3), Hit(SLIDING, "a", limit=10, cost=4), all_or_nothing=False
    )
    assert decision.allowed
    assert [c for c in redis_commands if c.upper() in ("EVALSHA", "EVAL")] == ["EVALSHA"]
    assert len(redis_commands) == 1, redis_commands  # the script is loaded, so nothing else


def test_hit_all_writes_what_the_single_limits_read() -> None:
    for _ in range(2):
        assert ratelimit.hit_all(Hit(MOVING, "x", limit=3), Hit(SLIDING, "x", limit=10, cost=4), all_or_nothing=True)
    assert MOVING.hit("x", limit=3).allowed  # the third
    assert not MOVING.test("x", limit=3).allowed
    assert not SLIDING.test("x", limit=10, cost=3).allowed  # 8 taken
    assert SLIDING.hit("x", limit=10, cost=2).allowed
    MOVING.hit("y", limit=2)
    SLIDING.hit("y", limit=10, cost=9)
    assert ratelimit.hit_all(Hit(MOVING, "y", limit=2), all_or_nothing=False).allowed  # the second of 2
    assert not ratelimit.hit_all(Hit(MOVING, "y", limit=2), all_or_nothing=False).allowed
    assert not ratelimit.hit_all(Hit(SLIDING, "y", limit=10, cost=2), all_or_nothing=False).allowed  # 9 + 2 > 10


def test_each_keeps_the_limits_before_a_refusal_consumed_all_or_nothing_does_not() -> None:
    OTHER.hit("full", limit=1)
    refused = ratelimit.hit_all(Hit(MOVING, "each", limit=5), Hit(OTHER, "full", limit=1), all_or_nothing=False)
    assert not refused.allowed and refused.retry_after_s >= 1  # the second's wait
    assert [MOVING.hit("each", limit=5).allowed for _ in range(5)] == [True] * 4 + [False]  # one was taken

    OTHER_SLIDING.hit("full", limit=100, cost=100)
    refused = ratelimit.hit_all(
        Hit(SLIDING, "all", limit=100, cost=60), Hit(OTHER_SLIDING, "full", limit=100, cost=60), all_or_nothing=True
    )
    assert not refused.allowed
    assert SLIDING.hit("all", limit=100, cost=100).allowed  # nothing was reserved


def test_hit_all_stops_at_the_first_refusal_and_skips_unlimited() -> None:
    MOVING.hit("first", limit=1)
    assert ratelimit.hit_all(Hit(MOVING, "first", limit=1), Hit(OTHER, "second", limit=5), all_or_nothing=False) == (
        Decision(False, MOVING.hit("first", limit=1).retry_after_s)
    )
    assert OTHER.test("second", limit=1).allowed  # never reached: nothing taken
    assert ratelimit.hit_all(Hit(MOVING, "zero", limit=0), all_or_nothing=True).allowed
    assert ratelimit.hit_all(Hit(SLIDING, "big", limit=10, cost=11), all_or_nothing=True) == Decision(False, 60)


def test_hit_all_fails_open_when_redis_is_down(settings) -> None:
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.5, "SOCKET_TIMEOUT": 0.5},
        }
    }
    assert ratelimit.hit_all(Hit(MOVING, "a", limit=1), Hit(SLIDING, "a", limit=1), all_or_nothing=True).allowed
    assert ratelimit._backend().down_until > time.monotonic() + REDIS_DOWN_SKIP_S - 1
