"""CPU per streamed chunk in a worker: each chunk its own XADD, against the chunks gathered
per task and flushed every SSE_DELTA_FLUSH_S (``llm.deltas``).

Each variant runs in a fresh interpreter (Django set up with the project's settings, the
bench's Redis database) that starts N threads the way ``worker-default`` runs N calls:
each streams C chunks through ``llm.streams.send_delta``, a provider-like pause between
two, then flushes its task's chunks. The figure is the whole process's CPU (user + system,
the flusher thread included) per chunk, the Redis server's CPU per chunk, and the events
written. Rounds alternate between the variants, so drift hits both alike.

Usage: .venv/bin/python -m bench.deltas [--calls 300] [--chunks 100] [--pause-ms 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from bench.contention import processes_cpu_s
from bench.stack import ROOT, base_env

CHILD = r"""
import json, os, sys, threading, time, uuid
import django
django.setup()
from django_redis import get_redis_connection
from llm import deltas, streams

calls, chunks, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ids = [uuid.uuid4() for _ in range(calls)]
start = threading.Barrier(calls + 1)

def call(task_id):
    start.wait()
    for i in range(chunks):
        time.sleep(pause)
        streams.send_delta(task_id, f" word{i}", 1, first=i == 0)
    deltas.flush(task_id)

threads = [threading.Thread(target=call, args=(task_id,)) for task_id in ids]
for thread in threads:
    thread.start()
cpu = time.process_time()
start.wait()
for thread in threads:
    thread.join()
used = time.process_time() - cpu
redis = get_redis_connection("default")
events = sum(redis.xlen(streams.stream_key(task_id)) for task_id in ids)
redis.delete(*[streams.stream_key(task_id) for task_id in ids])
print(json.dumps({"cpu_s": used, "events": events}))
"""


def run(flush_s: float, calls: int, chunks: int, pause_s: float) -> dict[str, float]:
    env = base_env() | {"SSE_DELTA_FLUSH_S": str(flush_s)}  # production settings, the bench's Redis
    redis_before = processes_cpu_s("redis-server")
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(calls), str(chunks), str(pause_s)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise SystemExit(f"the child failed:\n{out.stderr}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    total = calls * chunks
    return {
        "worker_us_per_chunk": result["cpu_s"] / total * 1e6,
        "redis_us_per_chunk": (processes_cpu_s("redis-server") - redis_before) / total * 1e6,
        "events_per_call": result["events"] / calls,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--pause-ms", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flush-s", type=float, default=0.05, help="the gathered variant's interval")
    args = parser.parse_args()
    variants = {"one XADD per chunk (0)": 0.0, f"gathered ({args.flush_s:g} s)": args.flush_s}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, flush_s in variants.items():
            results[name].append(run(flush_s, args.calls, args.chunks, args.pause_ms / 1000))
    print(
        f"{args.calls} calls x {args.chunks} chunks, {args.pause_ms:g} ms apart, {args.rounds} rounds "
        f"(load average at the end {os.getloadavg()[0]:.2f})"
    )
    print(f"{'variant':<28} {'worker us/chunk':>16} {'redis us/chunk':>15} {'events/call':>12}")
    for name, rounds in results.items():
        worker = [r["worker_us_per_chunk"] for r in rounds]
        redis = [r["redis_us_per_chunk"] for r in rounds]
        events = statistics.fmean(r["events_per_call"] for r in rounds)
        print(
            f"{name:<28} {statistics.median(worker):>16.1f} {statistics.median(redis):>15.1f} {events:>12.1f}"
            f"   (worker rounds: {', '.join(f'{w:.1f}' for w in worker)})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
