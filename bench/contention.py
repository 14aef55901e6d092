"""Where a submit waits: CPU per role and PostgreSQL wait events under closed-loop load.

Starts the bench stack (5 s fake calls, so the pools stay busy with what is accepted),
warms the path, then drives ``POST /api/v1/ai-tasks/`` (or the floor view) with wrk,
64 connections for 20 s, while it samples ``pg_stat_activity`` every 100 ms (state, wait
event and statement of every backend of the bench database, by role) and reads each
role's CPU from ``/proc`` (PostgreSQL's and Redis's processes too). Prints the rate, the
cores each role used and the commonest (role, state, wait, statement) samples: a lock
convoy shows as backends ``active`` on ``Lock/transactionid``, a starved client as
backends ``idle in transaction`` (the server waits for the next statement).

Usage: python -m bench.contention [platform|floor]   (issue 9, docs/decisions/submit-path.md)
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from pathlib import Path

import psycopg

from bench import wrk
from bench.capacity import body
from bench.run import prepare
from bench.stack import _TICK, DB, for_scenario, group_cpu_s

ROLES = ("web", "stream", "worker-priority", "worker-default", "worker-low", "beat")
SERVERS = ("postgres", "redis-server")


def processes_cpu_s(name: str) -> float:
    """User + system CPU seconds of every live process whose command starts with ``name``."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "comm").read_text().strip().startswith(name):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:13])
    return total / _TICK


def main() -> int:
    target = sys.argv[1] if len(sys.argv) > 1 else "platform"
    keys = prepare()
    with for_scenario(5000) as (stack, _db, directive):
        platform = target == "platform"
        url = f"{stack.web}/api/v1/ai-tasks/" if platform else f"{stack.web}/bench/floor/"
        script = wrk.post_script(body(directive), keys.a if platform else None)
        wrk.run(url, seconds=3, connections=8, script=script, threads=1)
        samples: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        stop = threading.Event()

        def sample() -> None:
            with psycopg.connect(f"dbname={DB}", autocommit=True) as conn:
                while not stop.is_set():
                    rows = conn.execute(
                        "SELECT application_name, state, coalesce(wait_event_type || '/' || wait_event, ''), "
                        "left(query, 60) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                        "AND (state = 'active' OR state LIKE 'idle in%%')",
                        [DB],
                    ).fetchall()
                    for role, state, wait, query in rows:
                        samples[(role, state, wait, query)] += 1
                    time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()

        def cpu() -> dict[str, float]:
            used = {role: group_cpu_s(stack.pgid(role)) for role in ROLES}
            used.update({name: processes_cpu_s(name) for name in SERVERS})
            return used

        before = cpu()
        seconds = 20
        result = wrk.run(url, seconds=seconds, connections=64, script=script)
        after = cpu()
        stop.set()
        sampler.join()
    print(f"{target}: {result['rps']:.1f} req/s, p50 {result['p50_ms']:.0f} / p95 {result['p95_ms']:.0f} ms")
    print("cores used:")
    for name in before:
        print(f"  {name:16s} {(after[name] - before[name]) / seconds:5.2f}")
    ticks = sum(samples.values()) and seconds * 10
    print(f"backends by (role, state, wait, statement), samples out of {ticks} (one every 100 ms):")
    for (role, state, wait, query), count in samples.most_common(20):
        print(f"  {count:5d}  {role:26s} {state:20s} {wait:24s} {query}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
