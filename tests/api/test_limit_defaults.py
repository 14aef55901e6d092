"""The production defaults of the rate limits (a process started with a production
environment, nothing from the test settings) are safe: normal use fits, the largest
single task fits many times a minute, and a broken model-limit spec stops start-up."""

from __future__ import annotations

import json
from typing import Any

from tests.test_settings import PREFIX, PRODUCTION, clean_env, manage

PRINT = (
    "import json; from django.conf import settings as s; print(json.dumps({k: getattr(s, k) for k in "
    "['RATE_LIMIT_WINDOW_S', 'KEY_REQUESTS_PER_MINUTE', 'ORG_REQUESTS_PER_MINUTE', 'KEY_TOKENS_PER_MINUTE', "
    "'ORG_TOKENS_PER_MINUTE', 'AUTH_FAILURES_PER_MINUTE', 'API_TRUSTED_PROXIES', 'LLM_MODEL_LIMITS', "
    "'LLM_SLOT_TTL_S']}))"
)
LARGEST_TASK = 4000 // 4 + 8192  # the longest prompt's estimate + the largest max_tokens


def production_settings(**changes: str) -> dict[str, Any]:
    result = manage("shell", "-c", PRINT, env=clean_env(**{**PRODUCTION, **changes}))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_production_defaults() -> None:
    values = production_settings()
    assert values == {
        "RATE_LIMIT_WINDOW_S": 60,
        "KEY_REQUESTS_PER_MINUTE": 600,
        "ORG_REQUESTS_PER_MINUTE": 3000,
        "KEY_TOKENS_PER_MINUTE": 1_000_000,
        "ORG_TOKENS_PER_MINUTE": 2_000_000,
        "AUTH_FAILURES_PER_MINUTE": 60,
        "API_TRUSTED_PROXIES": 0,
        "LLM_MODEL_LIMITS": "",
        "LLM_SLOT_TTL_S": 30.0,
    }
    # A key may run 100 of the largest tasks a minute; an organization's five busiest keys
    # may each send their full request rate.
    assert int(values["KEY_TOKENS_PER_MINUTE"]) >= 100 * LARGEST_TASK
    assert int(values["ORG_REQUESTS_PER_MINUTE"]) >= 5 * int(values["KEY_REQUESTS_PER_MINUTE"])


def test_the_old_throttle_rate_still_sets_the_key_default() -> None:
    assert production_settings(API_THROTTLE_RATE="20/s")["KEY_REQUESTS_PER_MINUTE"] == 1200
    assert production_settings(API_THROTTLE_RATE="20/s", KEY_REQUESTS_PER_MINUTE="7")["KEY_REQUESTS_PER_MINUTE"] == 7


def test_broken_limits_stop_start_up() -> None:
    for changes, message in [
        ({"LLM_MODEL_LIMITS": "fake-small:200"}, "LLM_MODEL_LIMITS must read model=calls[:tokens_per_minute]"),
        ({"ORG_TOKENS_PER_MINUTE": "-1"}, "ORG_TOKENS_PER_MINUTE must be 0 (unlimited) or positive"),
        ({"LLM_SLOT_TTL_S": "1"}, "LLM_SLOT_TTL_S must be at least 3"),
    ]:
        result = manage("check", env=clean_env(**{**PRODUCTION, **changes}))
        assert result.returncode == 2
        assert PREFIX in result.stderr and message in result.stderr
