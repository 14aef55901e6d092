"""Profile ``POST /api/v1/ai-tasks/`` as production serves it (issue 9 §1).

Starts the bench stack (gunicorn web role, DEBUG=false, real PostgreSQL and Redis, the
worker pools busy with 5 s fake calls), drives the submit path with wrk (closed loop,
16 connections) and records every gunicorn worker with py-spy meanwhile. Writes, under
``bench/results/``:

- ``profile-<label>.speedscope.json``: open it at https://www.speedscope.app;
- ``profile-<label>.txt``: the top frames (own time and inclusive time, as a share of the
  samples of request threads), the rate wrk measured, and the latency of sequential submits.

With ``--compare TREE`` (a ``git worktree`` of the code before a change) it also starts a
second web role from TREE on the same stack (same database, Redis, worker pools) and
alternates wrk rounds between the two and the floor view, then sends the same open-loop
load at 100 req/s to each: the before/after figures of one run, ``profile-<label>-compare.txt``.

Usage: python -m bench.profile [--label before] [--seconds 20] [--compare /tmp/old-tree]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench import wrk
from bench.capacity import BODY
from bench.run import prepare
from bench.scenarios import client
from bench.stack import ROOT, Stack, free_port, group_cpu_s, group_pids, running

RESULTS = ROOT / "bench" / "results"
ROLES = ("web", "worker-priority", "worker-default", "worker-low", "beat")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise SystemExit("py-spy is not installed (it is pinned in the dev extra: make venv)")
    return found


def record(pids: list[int], seconds: int, out: Path, *, on_cpu: bool = False) -> list[subprocess.Popen[bytes]]:
    """One py-spy per gunicorn worker (raw collapsed stacks). By default without pausing
    the process (``--nonblocking``, 250 samples/s), where a thread waiting in a C call
    (psycopg's wait, a socket read) is sampled too: wall time. ``on_cpu``: py-spy pauses
    the process per sample (100/s) and can tell idle threads apart: CPU time only."""
    mode = ["--rate", "100"] if on_cpu else ["--rate", "250", "--nonblocking"]
    return [
        subprocess.Popen(
            [py_spy(), "record", "--pid", str(pid), "--duration", str(seconds), *mode,
             "--format", "raw", "--output", f"{out}.{pid}.raw"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in pids
    ]  # fmt: skip


def top_frames(
    raw_files: list[Path], limit: int = 40, *, within: str | None = "handle_request", what: str = "request threads"
) -> tuple[str, dict[str, object]]:
    """Own and inclusive sample shares per frame, over the stacks that pass through the
    frame ``within`` (by default gunicorn's request threads, not the accept loop; None:
    every stack)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    stacks: collections.Counter[str] = collections.Counter()
    total = 0
    for raw in raw_files:
        for line in raw.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if within is not None and within not in stack:
                continue
            count = int(count_text)
            frames = stack.split(";")
            total += count
            stacks[stack] += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if not total:
        return f"no samples in {what}", {"total": 0}
    lines = [f"samples in {what}: {total}", "", "inclusive (share of those samples):"]
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in inclusive.most_common(limit)]
    lines += ["", "own time (leaf frames):"]
    lines += [f"  {100 * n / total:5.1f} %  {frame}" for frame, n in own.most_common(limit)]
    data = {"total": total, "inclusive": inclusive.most_common(200), "own": own.most_common(200)}
    return "\n".join(lines), data


def speedscope(raw_files: list[Path], out: Path) -> None:
    """The collapsed stacks as one speedscope 'sampled' profile (all workers together)."""
    frames: dict[str, int] = {}
    samples: list[list[int]] = []
    weights: list[int] = []
    for raw in raw_files:
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            samples.append([frames.setdefault(f, len(frames)) for f in stack.split(";")])
            weights.append(int(count))
    document = {
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "shared": {"frames": [{"name": name} for name in frames]},
        "profiles": [
            {"type": "sampled", "name": "gunicorn web workers: POST /api/v1/ai-tasks/", "unit": "none",
             "startValue": 0, "endValue": sum(weights), "samples": samples, "weights": weights}
        ],
        "name": out.stem,
    }  # fmt: skip
    out.write_text(json.dumps(document))


def sequential(web: str, key: str) -> str:
    """One connection, one submit at a time: the path's latency without queueing."""
    script = wrk.post_script(BODY, key)
    result = wrk.run(f"{web}/api/v1/ai-tasks/", seconds=4, connections=1, script=script, threads=1)
    return (
        f"sequential (1 connection): {result['rps']:.1f} req/s, "
        f"p50 {result['p50_ms']:.1f} / p95 {result['p95_ms']:.1f} ms"
    )


def start_web(stack: Stack, tree: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The web role of another work tree, on the same stack's environment."""
    port = free_port()
    env = {**stack.env, "PORT": str(port), "PYTHONPATH": f"{tree / 'src'}:{tree}"}
    log = Path(stack.logs["web"]).with_name(f"web-compare-{port}.log")
    process = subprocess.Popen(
        [str(tree / "bin" / "switchyard"), "web"], cwd=tree, env=env, stdout=log.open("wb"),
        stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            import httpx

            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    raise RuntimeError(f"the web role of {tree} did not come up:\n{log.read_text()[-2000:]}")


def compare(stack: Stack, key: str, tree: Path, *, rounds: int, seconds: int, connections: int) -> str:
    process, old = start_web(stack, tree)
    try:
        script = wrk.post_script(BODY, key)
        floor_script = wrk.post_script(BODY)
        targets = {
            "after": (f"{stack.web}/api/v1/ai-tasks/", script),
            "before": (f"{old}/api/v1/ai-tasks/", script),
            "floor": (f"{stack.web}/bench/floor/", floor_script),
        }
        for url, body in targets.values():  # warm every worker of both servers
            wrk.run(url, seconds=4, connections=16, script=body)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        groups = {"after": stack.pgid("web"), "before": process.pid, "floor": stack.pgid("web")}
        cpu_ms: dict[str, list[float]] = {name: [] for name in targets}  # web CPU per answered request
        for _ in range(rounds):
            for name, (url, body) in targets.items():
                used = group_cpu_s(groups[name])
                result = wrk.run(url, seconds=seconds, connections=connections, script=body)
                cpu_ms[name].append(1000 * (group_cpu_s(groups[name]) - used) / max(result["requests"], 1))
                results[name].append(result)
        open_loop = {
            name: client("open", f"{base}/api/v1/ai-tasks/", "--key", key, "--rate", "100", "--seconds", "10",
                         "--batch", f"compare-{name}")
            for name, base in (("after", stack.web), ("before", old))
        }  # fmt: skip
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    lines = [f"wrk 2 threads x {connections} connections x {seconds} s, {rounds} rounds alternating (req/s):"]
    for name, runs in results.items():
        rates = ", ".join(f"{r['rps']:.1f}" for r in runs)
        p95 = ", ".join(f"{r['p95_ms']:.0f}" for r in runs)
        errors = sum(r["errors"] for r in runs)
        cpu = sum(cpu_ms[name]) / len(cpu_ms[name])
        lines.append(f"  {name:6}  rate {rates}  | p95 ms {p95} | errors {errors:.0f} | web CPU {cpu:.1f} ms/request")
    mean = {name: sum(r["rps"] for r in runs) / len(runs) for name, runs in results.items()}
    lines.append(f"  mean: after {mean['after']:.1f}, before {mean['before']:.1f}, floor {mean['floor']:.1f} req/s")
    lines.append(
        f"  after/floor {mean['after'] / mean['floor']:.2f}, before/floor {mean['before'] / mean['floor']:.2f}, "
        f"after/before {mean['after'] / max(mean['before'], 1e-9):.2f}"
    )
    lines.append("open loop 100 req/s x 10 s (latency from the scheduled send):")
    for name, result in open_loop.items():
        lines.append(
            f"  {name:6}  p50 {result['p50_ms']:.0f} / p95 {result['p95_ms']:.0f} / p99 {result['p99_ms']:.0f} ms, "
            f"{result['errors']} errors, client late on {result['client_late']}"
        )
    return "\n".join(lines)


def _rev(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return out.stdout.strip() + ("+changes" if dirty else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--compare", type=Path, help="a work tree of the code before the change")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--on-cpu", action="store_true", help="CPU time only (py-spy pauses the process per sample)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    keys = prepare()
    base = RESULTS / f"profile-{args.label}"
    with running({"FAKE_LLM_LATENCY_MS": "5000"}, roles=ROLES) as (stack, _db):
        script = wrk.post_script(BODY, keys.a)
        url = f"{stack.web}/api/v1/ai-tasks/"
        # Warm every worker (each imports the URLconf on its first request), fill the pools.
        wrk.run(url, seconds=6, connections=16, script=script)
        master = stack.pgid("web")
        workers = [pid for pid in group_pids(master) if pid != master]
        spies = record(workers, args.seconds, base, on_cpu=args.on_cpu)
        time.sleep(0.5)
        result = wrk.run(url, seconds=args.seconds - 1, connections=args.connections, script=script)
        for spy in spies:
            spy.wait(timeout=30)
        counts = sequential(stack.web, keys.a)
        if args.compare:
            load = os.getloadavg()
            text = compare(stack, keys.a, args.compare, rounds=args.rounds, seconds=8, connections=64)
            head = f"before = {args.compare} (git {_rev(args.compare)}), after = this tree (git {_rev(ROOT)})"
            head += f"; load average at start {load[0]:.1f}\n"
            (RESULTS / f"profile-{args.label}-compare.txt").write_text(head + text + "\n")
            print(head + text)
    raw_files = sorted(RESULTS.glob(f"{base.name}.*.raw"))
    text, _data = top_frames(raw_files)
    speedscope(raw_files, base.with_suffix(".speedscope.json"))
    for raw in raw_files:
        raw.unlink()
    header = (
        f"POST /api/v1/ai-tasks/ under wrk 2 threads x {args.connections} connections x {args.seconds - 1} s "
        f"(gunicorn {len(workers)} workers, DEBUG=false, fake 5 s calls, pools busy)\n"
        f"rate {result['rps']:.1f} req/s, p50 {result['p50_ms']:.0f} / p95 {result['p95_ms']:.0f} ms, "
        f"{result['errors']:.0f} errors\n{counts}\n\n"
    )
    base.with_suffix(".txt").write_text(header + text + "\n")
    print(header + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
