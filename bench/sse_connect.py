"""SSE connect latency (request → response headers) against the stream role alone, at a
few client counts and ramps, with no other load: where the SSE scenario's slow connects
come from (docs/benchmarks.md, "SSE connects").

Starts the bench stack (1 s fake calls), submits 200 tasks that stream for two minutes,
then for each step opens N clients at RAMP per second with ``bench.sse_client`` (five per
task at most), waits until all have connected or failed, closes them and prints the
connect p50 / p95. ``--dump`` writes three ``py-spy dump``s of the stream process taken
during the last step's ramp to ``bench/results/sse-connect-dump-<i>.txt``.

Usage: python -m bench.sse_connect [--steps 20:10,200:100,1000:100] [--dump]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.profile import RESULTS, py_spy
from bench.run import prepare
from bench.scenarios import submit
from bench.stack import ROOT, base_env, for_scenario

TASKS = 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="20:10,200:100,1000:100", help="CLIENTS:RAMP, comma-separated")
    parser.add_argument("--dump", action="store_true", help="py-spy dumps of the stream process in the last step")
    args = parser.parse_args()
    steps = [(int(n), float(ramp)) for n, ramp in (step.split(":") for step in args.steps.split(","))]
    keys = prepare()
    with for_scenario(1000) as (stack, _db, _directive):
        batch = f"sse-connect-{uuid.uuid4().hex[:6]}"
        ids = submit(stack, keys.a, TASKS, batch, concurrency=16, directive="#fake:sleep=120000")["ids"]
        workdir = Path(tempfile.mkdtemp(prefix="sy-sse-connect-"))
        for index, (clients, ramp) in enumerate(steps):
            per_task = min(max(clients // len(ids), 1), 5)
            tasks = workdir / f"tasks-{index}.txt"
            tasks.write_text("\n".join(ids[: max(clients // per_task, 1)]))
            ready, stop = workdir / f"{index}.ready", workdir / f"{index}.stop"
            client = subprocess.Popen(
                [sys.executable, "-m", "bench.sse_client", f"http://127.0.0.1:{stack.stream_port}", keys.a,
                 str(tasks), "--per-task", str(per_task), "--ramp", str(ramp), "--hold", "90",
                 "--ready", str(ready), "--stop", str(stop)],
                cwd=ROOT, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            if args.dump and index == len(steps) - 1:
                time.sleep(min(clients / ramp / 2, 6))
                for i in range(3):
                    dump = [py_spy(), "dump", "--pid", str(stack.pgid("stream"))]
                    with (RESULTS / f"sse-connect-dump-{i}.txt").open("w") as handle:
                        subprocess.run(dump, stdout=handle, check=False)
                    time.sleep(1)
            while not ready.exists() and client.poll() is None:
                time.sleep(0.2)
            stop.write_text("")
            stdout, err = client.communicate(timeout=120)
            if client.returncode:
                raise SystemExit(f"bench.sse_client failed: {err[-2000:]}")
            result = json.loads(stdout)
            print(
                f"{clients} clients at {ramp:g}/s: connect p50 {result['connect_p50_ms']:.0f} ms, "
                f"p95 {result['connect_p95_ms']:.0f} ms, failures {result['failures'] or 'none'}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
