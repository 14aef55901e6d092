"""CPU per task across the whole platform: every role, PostgreSQL and Redis (issue 9).

Starts the bench stack (1 s fake calls), warms it with 200 tasks, then submits N tasks at
a steady rate (default 1,000 at 40/s), waits until all are terminal and divides each
process group's CPU (user + system, from ``/proc``) by the tasks: what one task costs from
the 202 to its analytics row, excluding the provider wait. The memory scenario reports
web and worker-default; this adds the other pools and the servers.

Usage: python -m bench.cost [N] [RATE] [LATENCY_MS]
"""

from __future__ import annotations

import sys
import time
import uuid

from bench.contention import ROLES, SERVERS, processes_cpu_s
from bench.run import prepare
from bench.scenarios import batch_state, submit, wait_terminal
from bench.stack import for_scenario, group_cpu_s


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 40
    latency = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    keys = prepare()
    with for_scenario(latency) as (stack, db, directive):
        warm = f"cost-warm-{uuid.uuid4().hex[:6]}"
        warmed = submit(stack, keys.a, 200, warm, concurrency=16, rate=rate, directive=directive)
        wait_terminal(db, warm, int(warmed["submitted"]), 120)
        time.sleep(2)

        def cpu() -> dict[str, float]:
            used = {role: group_cpu_s(stack.pgid(role)) for role in ROLES}
            used.update({name: processes_cpu_s(name) for name in SERVERS})
            return used

        before, started = cpu(), time.monotonic()
        batch = f"cost-{uuid.uuid4().hex[:6]}"
        sent = submit(stack, keys.a, count, batch, concurrency=16, rate=rate, directive=directive)
        done, _ = wait_terminal(db, batch, int(sent["submitted"]), 300)
        after, elapsed = cpu(), time.monotonic() - started
        tasks, terminal, _ = batch_state(db, batch)
    print(
        f"{tasks} tasks ({terminal} terminal{'' if done else ', not all in time'}) in {elapsed:.1f} s, "
        f"submitted at {sent['rate']:.1f}/s; CPU per task:"
    )
    total = 0.0
    for name in before:
        per_task = (after[name] - before[name]) / max(tasks, 1) * 1000
        total += per_task
        print(f"  {name:16s} {per_task:6.2f} ms")
    print(f"  {'total':16s} {total:6.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
