"""The asyncio load client for task lifecycles: burst submits and an open-loop client.

Runs in its own process (``python -m bench.client ...``) so its CPU is not the
harness's; it prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import httpx


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def body(prompt: str, batch: str, priority: str = "normal") -> dict[str, Any]:
    return {"prompt": prompt, "cache": False, "priority": priority, "metadata": {"bench": batch}}


async def burst(
    url: str,
    key: str,
    count: int,
    *,
    batch: str,
    concurrency: int,
    rate: float | None,
    priority: str,
    directive: str = "",
) -> dict[str, Any]:
    """Submit ``count`` tasks as fast as ``concurrency`` connections allow (or at ``rate``/s);
    ``directive`` (a fake provider directive such as ``#fake:sleep=120000``) ends each prompt."""
    headers = {"Authorization": f"Bearer {key}"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    ids: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    start = time.monotonic()

    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=60) as client:

        async def one(i: int) -> None:
            sent = time.monotonic()
            try:
                prompt = f"Benchmark task {batch} number {i}. {directive}".strip()
                response = await client.post(url, json=body(prompt, batch, priority))
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append((time.monotonic() - sent) * 1000)
            if response.status_code == 202:
                ids.append(response.json()["id"])
            else:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

        async def loop() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                if rate:
                    delay = start + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await one(i)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
    elapsed = time.monotonic() - start
    return {
        "submitted": len(ids),
        "seconds": elapsed,
        "rate": len(ids) / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "errors": errors,
        "ids": ids,
    }


async def open_loop(
    url: str, key: str | None, rate: float, seconds: float, batch: str, directive: str = ""
) -> dict[str, Any]:
    """Offer ``rate`` requests/s whatever the answers do (no coordinated omission): each
    request is sent at its scheduled time and its latency counts from that time."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    late = 0
    total = int(rate * seconds)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        start = time.monotonic()

        async def one(i: int) -> None:
            scheduled = start + i / rate
            try:
                prompt = f"Open loop {batch} request {i}. {directive}".strip()
                response = await client.post(url, json=body(prompt, batch))
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                return
            latencies.append((time.monotonic() - scheduled) * 1000)
            if response.status_code >= 300:
                errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1

        pending = []
        for i in range(total):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.05:
                late += 1  # the client itself fell behind the schedule
            pending.append(asyncio.create_task(one(i)))
        await asyncio.gather(*pending)
    return {
        "offered_rps": rate,
        "requests": total,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "client_late": late,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="bench load client")
    sub = parser.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("burst")
    b.add_argument("url")
    b.add_argument("key")
    b.add_argument("count", type=int)
    b.add_argument("--batch", required=True)
    b.add_argument("--concurrency", type=int, default=32)
    b.add_argument("--rate", type=float, default=None)
    b.add_argument("--priority", default="normal")
    b.add_argument("--directive", default="", help="appended to every prompt (fake provider directives)")
    o = sub.add_parser("open")
    o.add_argument("url")
    o.add_argument("--key", default=None)
    o.add_argument("--rate", type=float, required=True)
    o.add_argument("--seconds", type=float, required=True)
    o.add_argument("--batch", required=True)
    o.add_argument("--directive", default="", help="appended to every prompt (fake provider directives)")
    args = parser.parse_args()
    if args.mode == "burst":
        result = asyncio.run(
            burst(
                args.url,
                args.key,
                args.count,
                batch=args.batch,
                concurrency=args.concurrency,
                rate=args.rate,
                priority=args.priority,
                directive=args.directive,
            )
        )
    else:
        result = asyncio.run(open_loop(args.url, args.key, args.rate, args.seconds, args.batch, args.directive))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
