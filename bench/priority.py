"""Issue 9: priority isolation. A backlog of ``low`` tasks, then a batch of ``high`` ones:
their queue wait (``started_at - created_at``). The baseline is the same load with one
shared queue: backlog and batch both ``normal`` (one queue, one pool), on the same stack."""

from __future__ import annotations

import time
import uuid
from typing import Any

from bench.client import percentile
from bench.report import Figure
from bench.scenarios import Keys, Sizes, client
from bench.stack import Database, Stack, for_scenario, settle

LATENCY_MS = 200


def _waits(db: Database, batch: str) -> tuple[list[float], int]:
    """Queue waits (ms) of the batch: finished ones, plus the time waited so far by the
    ones not started yet (a lower bound); and how many had not started."""
    rows = db.rows(
        "SELECT extract(epoch FROM coalesce(started_at, now()) - created_at), started_at IS NULL "
        "FROM llm_aitask WHERE metadata->>'bench' = %s",
        batch,
    )
    return [float(r[0]) * 1000 for r in rows], sum(1 for r in rows if r[1])


def _run(
    stack: Stack, db: Database, keys: Keys, sizes: Sizes, backlog: str, batch: str, directive: str
) -> dict[str, Any]:
    tag_backlog, tag_batch = f"prio-{backlog}-{uuid.uuid4().hex[:6]}", f"prio-{batch}-{uuid.uuid4().hex[:6]}"
    url = f"{stack.web}/api/v1/ai-tasks/"
    common = [*(["--directive", directive] if directive else []), "--concurrency", "32", "--batch"]
    client("burst", url, keys.a, str(sizes.priority_backlog), *common, tag_backlog, "--priority", backlog)
    client("burst", url, keys.a, str(sizes.priority_batch), *common, tag_batch, "--priority", batch)
    deadline = time.monotonic() + sizes.priority_deadline_s
    while time.monotonic() < deadline and not stack.aborted.is_set():
        _, not_started = _waits(db, tag_batch)
        if not not_started:
            break
        time.sleep(0.5)
    waits, not_started = _waits(db, tag_batch)
    settle(db)  # the next run starts with idle pools and empty queues
    return {"p50_ms": percentile(waits, 50), "p95_ms": percentile(waits, 95), "not_started": not_started}


def priority(keys: Keys, sizes: Sizes) -> tuple[list[Figure], dict[str, Any]]:
    with for_scenario(LATENCY_MS) as (stack, db, directive):
        isolated = _run(stack, db, keys, sizes, "low", "high", directive)
        shared = _run(stack, db, keys, sizes, "normal", "normal", directive)
    s = "priority"
    where = f"{sizes.priority_backlog:,} backlog then {sizes.priority_batch}, {LATENCY_MS} ms calls"

    def note(result: dict[str, Any]) -> str:
        left = result["not_started"]
        return f"p50 {result['p50_ms']:.0f} ms" + (
            f"; {left} not started after {sizes.priority_deadline_s:.0f} s (counted as waited so far)" if left else ""
        )

    figures = [
        Figure(
            s,
            f"high behind a low backlog: queue wait p95 ({where})",
            isolated["p95_ms"],
            "ms",
            1000,
            note=note(isolated),
        ),
        Figure(s, "baseline, one shared queue (all normal): queue wait p95", shared["p95_ms"], "ms", note=note(shared)),
    ]
    return figures, {"isolated": isolated, "shared": shared, "latency_ms": LATENCY_MS}
