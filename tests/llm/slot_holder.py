"""A worker-like process for tests/llm/test_provider_limits.py: takes provider slots the
way a worker's calls would. ``python -m tests.llm.slot_holder hold MODEL THREADS ROUNDS HOLD_S``
or ``... crash MODEL`` (takes a slot, says so, and dies by SIGKILL without releasing it)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import django

# Counts calls in flight across every process and keeps the highest count seen.
PROBE = """
local v = redis.call('INCR', KEYS[1])
if v > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], v) end
return v
"""


def main() -> None:
    django.setup()
    from django_redis import get_redis_connection

    from llm.limits import provider_slot

    mode, model = sys.argv[1], sys.argv[2]
    if mode == "crash":
        with provider_slot(model, timeout_s=10):
            print("held", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    threads, rounds, hold_s = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    client = get_redis_connection("default")
    probe = client.register_script(PROBE)
    done: list[int] = []

    def run() -> None:
        for _ in range(rounds):
            with provider_slot(model, timeout_s=60):
                probe(keys=["probe:inflight", "probe:max"])
                time.sleep(hold_s)
                client.decr("probe:inflight")
            done.append(1)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(f"calls={len(done)}", flush=True)


if __name__ == "__main__":
    main()
