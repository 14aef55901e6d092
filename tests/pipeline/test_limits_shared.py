"""A limit shared by two web processes holds exactly: two real uvicorn servers answer
one API key's requests concurrently, and across both of them exactly the limit passes."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def fire(bases: list[str], key: str, count: int, method: str, path: str, body: dict | None = None) -> Counter[int]:
    headers = {"Authorization": f"Bearer {key}"}

    def one(index: int) -> int:
        url = f"{bases[index % len(bases)]}{path}"
        return httpx.request(method, url, headers=headers, json=body, timeout=30).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        return Counter(pool.map(one, range(count)))


def test_requests_per_minute_hold_across_two_web_processes(start_stream_server, tenant) -> None:
    env = {"KEY_REQUESTS_PER_MINUTE": "10", "ORG_REQUESTS_PER_MINUTE": "0"}
    bases = [start_stream_server(**env), start_stream_server(**env)]
    statuses = fire(bases, tenant.issued.key, 40, "GET", "/api/v1/me/")
    assert statuses == Counter({200: 10, 429: 30})


def test_tokens_per_minute_hold_across_two_web_processes(start_stream_server, tenant) -> None:
    estimate = 8 + 1000  # "Summarise the quarterly report." + max_tokens
    env = {"KEY_TOKENS_PER_MINUTE": str(5 * estimate)}
    bases = [start_stream_server(**env), start_stream_server(**env)]
    body = {"prompt": "Summarise the quarterly report.", "max_tokens": 1000, "cache": False}
    statuses = fire(bases, tenant.issued.key, 16, "POST", "/api/v1/ai-tasks/", body)
    assert statuses == Counter({202: 5, 429: 11})
