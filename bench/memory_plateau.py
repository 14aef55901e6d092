"""worker-default's RSS after a warm-up and then every few thousand tasks: does the memory
scenario's growth keep going (a leak per task) or level off (caches and allocator arenas
warming up)? ``python -m bench.memory_plateau`` with the bench's DATABASE_URL / REDIS_URL
(Makefile ``BENCH_SERVICES``); prints one line per point. Not part of ``make bench``."""

from __future__ import annotations

import time
import uuid

from bench.run import prepare
from bench.scenarios import WARM_TASKS, submit, wait_terminal
from bench.stack import for_scenario, group_memory

POINTS = (100, 4_900, 5_000, 5_000)  # cumulative 100, 5,000, 10,000, 15,000


def main() -> None:
    keys = prepare()
    with for_scenario(50) as (stack, db, directive):
        pgid = stack.pgid("worker-default")
        warm = f"plateau-warm-{uuid.uuid4().hex[:6]}"
        sent = submit(stack, keys.a, WARM_TASKS, warm, concurrency=64, directive="#fake:sleep=5000")
        wait_terminal(db, warm, int(sent["submitted"]), 120)
        print("after the warm-up", group_memory(pgid), flush=True)
        done = 0
        for count in POINTS:
            batch = f"plateau-{uuid.uuid4().hex[:6]}"
            sent = submit(stack, keys.a, count, batch, concurrency=16, directive=directive)
            wait_terminal(db, batch, int(sent["submitted"]), 600)
            time.sleep(1)
            done += count
            print(f"after {done:,} tasks", group_memory(pgid), flush=True)


if __name__ == "__main__":
    main()
