"""Issue 9: SSE fan-out. 1,000 concurrent SSE clients on one stream process (uvicorn,
``bin/switchyard stream``) while submit load runs at half the platform's capacity.

On one stack whose own calls take ``sse_load_latency_ms`` (short: the load never fills
worker-default's slots):

1. capacity: wrk, closed loop, on ``POST /api/v1/ai-tasks/`` (64 connections);
2. the fan-out's ``sse_clients / 5`` tasks are submitted, each with a
   ``#fake:sleep=<sse_latency_ms>`` directive, so they stream (one chunk per word)
   through both load phases below;
3. baseline: open-loop submits at half the capacity rate, no SSE client: submit p95, and
   the stack's PostgreSQL connections sampled meanwhile;
4. fan-out: five clients on each of those tasks (``bench.sse_client``, its own process)
   connecting at ``sse_ramp``/s; once all are connected, the same open-loop submit load
   again: submit p95 against the baseline (the same tasks stream in both phases; only the
   clients differ), event delivery delay (receipt - the event's Redis stream id time)
   p50/p95, clients held, and the PostgreSQL connections (peak, against the baseline's:
   an open stream holds none).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from bench import wrk
from bench.capacity import body
from bench.report import Figure
from bench.scenarios import Keys, Sizes, batch_state, client, submit
from bench.stack import REDIS_URL, ROOT, Database, Stack, base_env, for_scenario, group_cpu_s, group_memory, group_pids

PER_TASK = 5


class ConnectionSampler(threading.Thread):
    """Peak PostgreSQL connections of the stack while it runs (twice a second)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.done = threading.Event()
        self.samples: list[int] = []
        self.stream: list[int] = []  # the stream role's own connections

    def run(self) -> None:
        db = Database()
        try:
            while not self.done.wait(0.5):
                self.samples.append(db.connections())
                self.stream.append(db.connections_of("stream"))
        finally:
            db.close()

    def stop(self) -> tuple[int, int]:
        self.done.set()
        self.join(timeout=5)
        return max(self.samples, default=0), max(self.stream, default=0)


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far (/proc/stat), in ticks."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _process_cpu_s(pid: int) -> float:
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")
    return 0.0


CPU_ROLES = ("web", "stream", "worker-default")


def _cpu(stack: Stack, extra_pid: int | None = None) -> dict[str, float]:
    """CPU seconds so far: the machine's busy share (ticks), each role's group, the SSE client."""
    busy, total = _machine_jiffies()
    cpu = {role: group_cpu_s(stack.pgid(role)) for role in CPU_ROLES}
    cpu |= {"machine_busy": busy, "machine_total": total, "sse_client": _process_cpu_s(extra_pid) if extra_pid else 0.0}
    return cpu


def _cpu_share(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
    """Per phase: the machine's busy share of its 2 cores (0-1) and each process's cores used."""
    share = {k: (after[k] - before[k]) / wall_s for k in (*CPU_ROLES, "sse_client")}
    share["machine"] = (after["machine_busy"] - before["machine_busy"]) / max(
        after["machine_total"] - before["machine_total"], 1
    )
    return share


def _open_loop(
    stack: Stack, key: str, rate: float, seconds: float, directive: str, extra_pid: int | None = None
) -> tuple[dict[str, Any], tuple[int, int], dict[str, float]]:
    sampler = ConnectionSampler()
    sampler.start()
    url = f"{stack.web}/api/v1/ai-tasks/"
    cpu_before, wall = _cpu(stack, extra_pid), time.monotonic()
    result = client("open", url, "--key", key, "--rate", f"{rate:.1f}", "--seconds", str(seconds),
                    "--batch", f"sse-load-{uuid.uuid4().hex[:6]}",
                    *(["--directive", directive] if directive else []))  # fmt: skip
    cpu = _cpu_share(cpu_before, _cpu(stack, extra_pid), time.monotonic() - wall)
    return result, sampler.stop(), cpu


def _redis_connections(url: str) -> int:
    """Connections to the bench's cache/SSE database (every role's, Redis-side)."""
    client = redis.Redis.from_url(url)
    try:
        db = client.connection_pool.connection_kwargs.get("db", 0)
        return sum(1 for entry in client.client_list() if int(entry.get("db", -1)) == db) - 1  # not this one
    finally:
        client.close()


def _threads(pgid: int) -> int:
    """Threads of the stream process group (an open stream should hold none)."""
    total = 0
    for pid in group_pids(pgid):
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))
    return total


def sse(keys: Keys, sizes: Sizes) -> tuple[list[Figure], dict[str, Any]]:
    clients = sizes.sse_clients
    with for_scenario(sizes.sse_load_latency_ms) as (stack, db, directive):
        script = wrk.post_script(body(directive), keys.a)
        url = f"{stack.web}/api/v1/ai-tasks/"
        wrk.run(url, seconds=sizes.sse_warm_seconds, connections=16, script=script)  # warm every web worker
        capacity = wrk.run(url, seconds=sizes.sse_seconds, connections=64, script=script)
        rate = max(capacity["rps"] / 2, 1.0)
        idle_connections = db.connections()

        batch = f"sse-{uuid.uuid4().hex[:6]}"
        burst = submit(stack, keys.a, clients // PER_TASK, batch, concurrency=16,
                       directive=f"#fake:sleep={sizes.sse_latency_ms}")  # fmt: skip
        baseline, (baseline_peak, baseline_stream), baseline_cpu = _open_loop(
            stack, keys.a, rate, sizes.sse_seconds, directive
        )
        baseline_redis = _redis_connections(REDIS_URL)
        _, _, streaming_at_baseline = batch_state(db, batch)

        ids = Path(tempfile.mkstemp(prefix="sy-bench-sse-", suffix=".txt")[1])
        ids.write_text("\n".join(burst["ids"]))
        ready, stop = ids.with_suffix(".ready"), ids.with_suffix(".stop")
        hold = 1000 / sizes.sse_ramp + 3 * sizes.sse_seconds + 30
        fan_out = subprocess.Popen(
            [sys.executable, "-m", "bench.sse_client", f"http://127.0.0.1:{stack.stream_port}", keys.a, str(ids),
             "--per-task", str(PER_TASK), "--ramp", str(sizes.sse_ramp), "--hold", f"{hold:.0f}",
             "--ready", str(ready), "--stop", str(stop)],
            cwd=ROOT, env=base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        ramp_sampler = ConnectionSampler()  # the stream role's connections while clients connect
        ramp_sampler.start()
        deadline = time.monotonic() + hold
        while not ready.exists() and fan_out.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        ramp_peak, ramp_stream = ramp_sampler.stop()
        held = json.loads(ready.read_text())["open"] if ready.exists() else 0
        stream_cpu, wall = group_cpu_s(stack.pgid("stream")), time.monotonic()
        threads_sampled = [_threads(stack.pgid("stream"))]
        sse_redis = _redis_connections(REDIS_URL)
        with_sse, (sse_peak, sse_stream), sse_cpu = _open_loop(
            stack, keys.a, rate, sizes.sse_seconds, directive, fan_out.pid
        )
        sse_peak, sse_stream = max(sse_peak, ramp_peak), max(sse_stream, ramp_stream)
        _, done_during_sse, streaming_with_sse = batch_state(db, batch)
        threads_sampled.append(_threads(stack.pgid("stream")))
        stream_busy = (group_cpu_s(stack.pgid("stream")) - stream_cpu) / (time.monotonic() - wall)
        stream_memory = group_memory(stack.pgid("stream"))
        stream_threads = max(threads_sampled, default=0)
        if sizes.sse_stop_after_load:  # the figures are taken: close the clients now, not at the hold's end
            stop.touch()
        out, err = fan_out.communicate(timeout=hold + 60)
        if fan_out.returncode != 0:
            raise RuntimeError(f"bench.sse_client failed: {err[-2000:]}")
        fan = json.loads(out)

    s = "sse"
    ratio = with_sse["p95_ms"] / max(baseline["p95_ms"], 1e-9)
    note_load = f"{rate:.0f} req/s offered (half of {capacity['rps']:.0f} req/s closed loop) x {sizes.sse_seconds} s"
    failures = ", ".join(f"{k} {v}" for k, v in fan["failures"].items()) or "none"
    figures = [
        Figure(s, f"SSE clients held at once (of {clients}, one stream process)", fan["peak_open"], "clients",
               clients, "higher", note=f"{held} open when all had connected; failures: {failures}"),
        Figure(s, "event delivery delay p50", fan["delay_p50_ms"], "ms",
               note=f"{fan['events']} live events, p99 {fan['delay_p99_ms']:.0f} ms; fan-out tasks streaming: "
               f"{streaming_at_baseline} of {len(burst['ids'])} after the baseline, {streaming_with_sse} after the "
               f"load with clients ({done_during_sse} ended)"),
        Figure(s, "event delivery delay p95", fan["delay_p95_ms"], "ms"),
        Figure(s, "threads of the stream process while the clients are held", stream_threads, "threads",
               note="Django's ASGI handler keeps one idle executor thread per open request (docs/benchmarks.md)"),
        Figure(s, "stream process CPU while the clients are held", 100 * stream_busy, "% of a core",
               note=f"RSS {stream_memory.rss_mib:.0f} MiB; connect p50 {fan['connect_p50_ms']:.0f} / "
               f"p95 {fan['connect_p95_ms']:.0f} ms at {sizes.sse_ramp:.0f}/s"),
        Figure(s, "submit p95 without SSE clients (open loop)", baseline["p95_ms"], "ms",
               note=f"{note_load}; p50 {baseline['p50_ms']:.0f} ms, {baseline['errors']} errors"),
        Figure(s, f"submit p95 with {clients} SSE clients (open loop)", with_sse["p95_ms"], "ms",
               note=f"p50 {with_sse['p50_ms']:.0f} ms, {with_sse['errors']} errors"),
        Figure(s, "submit p95 with SSE / without", ratio, "x", 2.0),
        Figure(s, "PostgreSQL connections of the stream role: peak with SSE clients", sse_stream, "conns",
               max(baseline_stream, 8), note=f"while 1,000 connect and then held; peak without SSE clients "
               f"{baseline_stream}; its pool holds at most DATABASE_POOL_MAX (8)"),
        Figure(s, "Redis connections to the SSE database while the clients are held", sse_redis, "conns",
               note=f"without SSE clients {baseline_redis} (every role's, Redis-side, database 8)"),
        Figure(s, "machine CPU busy during the load with SSE clients", 100 * sse_cpu["machine"], "%",
               note=f"without clients {100 * baseline_cpu['machine']:.0f} %; cores used with / without: "
               + ", ".join(f"{k} {sse_cpu[k]:.2f} / {baseline_cpu[k]:.2f}" for k in (*CPU_ROLES, "sse_client"))),
        Figure(s, "PostgreSQL connections of the whole stack: peak with SSE clients", sse_peak, "conns",
               note=f"peak without SSE clients {baseline_peak}, idle stack {idle_connections}; the difference "
               "is web threads opening persistent connections while submits are slower"),
    ]  # fmt: skip
    details = {
        "capacity": capacity, "rate": rate, "baseline": baseline, "fan_out_batch": batch,
        "fan_out_streaming": {"after_baseline": streaming_at_baseline, "after_with_sse": streaming_with_sse,
                              "ended": done_during_sse}, "with_sse": with_sse, "fan_out": fan,
        "stream_cpu_share": stream_busy, "cpu": {"baseline": baseline_cpu, "with_sse": sse_cpu},
        "redis_connections": {"baseline": baseline_redis, "with_sse": sse_redis},
        "stream_threads": threads_sampled, "stream_rss_mib": stream_memory.rss_mib,
        "connections": {"idle": idle_connections, "baseline_peak": baseline_peak, "sse_peak": sse_peak,
                        "stream_baseline_peak": baseline_stream, "stream_sse_peak": sse_stream},
    }  # fmt: skip
    return figures, details
