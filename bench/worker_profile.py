"""Where the worker pools' CPU goes per task (issue 9: the cost-per-task figures).

Starts the bench stack (1 s fake calls), warms it, then submits N tasks at a steady rate
while py-spy records every process of worker-priority, worker-default and worker-low
with ``--gil`` (only the thread holding the GIL is sampled: Python CPU, not the hundreds
of threads waiting on a provider or a socket). Writes the top frames of each pool, own
and inclusive, to ``bench/results/profile-workers-<label>.txt``.

Usage: python -m bench.worker_profile [--label L] [--tasks 900] [--rate 30]
"""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid

from bench.profile import RESULTS, py_spy, top_frames
from bench.run import prepare
from bench.scenarios import submit, wait_terminal
from bench.stack import for_scenario, group_cpu_s, group_pids

POOLS = ("worker-priority", "worker-default", "worker-low")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    parser.add_argument("--tasks", type=int, default=900)
    parser.add_argument("--rate", type=float, default=30)
    parser.add_argument("--limit", type=int, default=45)
    args = parser.parse_args()
    keys = prepare()
    base = RESULTS / f"profile-workers-{args.label}"
    seconds = int(args.tasks / args.rate) + 2
    with for_scenario(1000) as (stack, db, directive):
        warm = f"wp-warm-{uuid.uuid4().hex[:6]}"
        warmed = submit(stack, keys.a, 200, warm, concurrency=16, rate=args.rate, directive=directive)
        wait_terminal(db, warm, int(warmed["submitted"]), 120)
        pids = {pool: group_pids(stack.pgid(pool)) for pool in POOLS}
        cpu_before = {pool: group_cpu_s(stack.pgid(pool)) for pool in POOLS}
        spies = [
            subprocess.Popen(
                [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200", "--gil",
                 "--nonblocking", "--format", "raw", "--output", f"{base}.{pool}.{pid}.raw"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for pool, group in pids.items() for pid in group
        ]  # fmt: skip
        batch = f"wp-{uuid.uuid4().hex[:6]}"
        sent = submit(stack, keys.a, args.tasks, batch, concurrency=16, rate=args.rate, directive=directive)
        wait_terminal(db, batch, int(sent["submitted"]), 120)
        for spy in spies:
            spy.wait(timeout=60)
        cpu = {pool: (group_cpu_s(stack.pgid(pool)) - cpu_before[pool]) / args.tasks * 1000 for pool in POOLS}
    sections = [f"{args.tasks} tasks at {sent['rate']:.1f}/s, 1 s fake calls; py-spy --gil, 200 samples/s"]
    for pool in POOLS:
        raws = sorted(RESULTS.glob(f"{base.name}.{pool}.*.raw"))
        profile, _ = top_frames(raws, args.limit, within=None, what="threads holding the GIL")
        sections.append(f"\n=== {pool}: {cpu[pool]:.1f} ms CPU per task (from /proc)\n{profile}")
        for raw in raws:
            raw.unlink()
    text = "\n".join(sections) + "\n"
    base.with_suffix(".txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
