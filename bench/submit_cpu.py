"""CPU of one submit in-process, through Django's whole stack, against the floor view.

No server and no load: Django's test client sends N requests through every middleware to
``POST /api/v1/ai-tasks/`` and to the floor view, in this process, against the bench
database and Redis, and prints the process CPU per request (``time.process_time``: the
Python side only, PostgreSQL's share is not in it). Steady and quiet enough to compare
two versions of the submit path within a few percent; ``--profile`` prints cProfile's top
functions instead. What the bench's figures depend on besides: round trips, locks and
the machine's other work (bench.contention).

Usage: python -m bench.submit_cpu [N] [--profile]   (issue 9, docs/decisions/submit-path.md)
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import sys
import time
from collections.abc import Callable

from bench.run import prepare
from bench.stack import ROOT, base_env


def main() -> int:
    count = int(next((a for a in sys.argv[1:] if a.isdigit()), "400"))
    keys = prepare()
    os.environ.update(base_env())
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    os.environ["LOG_LEVEL"] = "WARNING"
    import django

    django.setup()
    from django.test import Client

    client = Client(HTTP_HOST="127.0.0.1")
    body = json.dumps({"prompt": "Benchmark the submit path, please. #fake:sleep=1", "cache": False, "priority": "low"})

    def platform() -> None:
        response = client.post(
            "/api/v1/ai-tasks/", body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {keys.a}"
        )
        assert response.status_code == 202, response.content

    def floor() -> None:
        response = client.post("/bench/floor/", body, content_type="application/json")
        assert response.status_code < 300, response.content

    for name, call in (("platform", platform), ("floor", floor)):
        for _ in range(50):  # imports, connections, caches
            call()
        if "--profile" in sys.argv:
            profile(name, call, count)
            continue
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            call()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        print(f"{name:9s} {cpu / count * 1000:5.2f} ms CPU, {wall / count * 1000:5.2f} ms wall per request")
    return 0


def profile(name: str, call: Callable[[], None], count: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        call()
    profiler.disable()
    print(f"--- {name}")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    raise SystemExit(main())
