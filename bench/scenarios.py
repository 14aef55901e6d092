"""The task-lifecycle scenarios of issues 7 and 9, each on a fresh stack (full run) or on
the quick run's one shared stack (``bench.stack.for_scenario``).

Each returns the figures it measured (with their targets) and the raw details that go
into the JSON file. Load comes from separate processes (``bench.client``, wrk).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from bench.client import percentile
from bench.report import Figure
from bench.stack import ROOT, Database, Stack, base_env, for_scenario, group_cpu_s, group_memory

TERMINAL = ("done", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class Keys:
    a: str  # organization "Bench" (also the floor view's organization: the first one)
    b: str  # organization "Bench B" (fairness)
    org_a: str
    org_b: str


@dataclass(frozen=True, slots=True)
class Sizes:
    inflight_tasks: int = 300
    inflight_latency_ms: int = 10_000
    inflight_deadline_s: float = 120
    memory_small: int = 100
    memory_large: int = 5_000
    memory_deadline_s: float = 900
    fairness_backlog: int = 2_000
    fairness_latency_ms: int = 1_000
    fairness_deadline_s: float = 120
    capacity_latency_ms: int = 5_000
    capacity_seconds: int = 30
    capacity_rounds: int = 2
    # 200 req/s offered against a platform answering ~10 req/s on the loaded 2-core machine
    # kept the client itself busy for over 15 minutes (4,000 requests queued): 100 only.
    open_loop_rates: tuple[float, ...] = (100.0,)
    open_loop_seconds: float = 10
    dispatch_tasks: int = 500
    dispatch_rate: float = 10.0
    dispatch_latency_ms: int = 100
    priority_backlog: int = 2_000
    priority_batch: int = 200
    priority_deadline_s: float = 60
    sse_clients: int = 1_000
    # The fan-out's calls (a #fake:sleep directive) stream through both load phases; the
    # load's own calls are short, so they never fill worker-default's slots.
    sse_latency_ms: int = 120_000
    sse_load_latency_ms: int = 500
    sse_seconds: int = 15
    sse_ramp: float = 100.0  # new SSE connections per second
    # Shorter phases the quick run uses (the full run keeps what it always did).
    memory_pause_s: float = 2  # after each batch, before reading RSS
    warm_seconds: int = 2  # wrk warm-up per path
    healthz_seconds: int = 3
    naive_waves: int = 4  # the naive view's wrk run lasts this many call latencies (at least)
    sse_warm_seconds: int = 3
    sse_stop_after_load: bool = False  # True: close the SSE clients once the load has run
    # True: restart web after the naive view's round. wrk stops with up to 64 naive requests
    # still queued in gunicorn (one worker took every connection and serves four at a time),
    # which then hold web threads for a minute and more: the next round and the open loop
    # that follows would measure them (on a shared stack, the next scenarios too).
    fresh_web_after_naive: bool = True
    # One stack for every scenario (bench.stack.shared), in this order; None: a fresh stack each.
    shared_order: tuple[str, ...] | None = None


# The quick run: every scenario on one stack, small counts, short phases (about two
# minutes on the 2-core development machine). Memory runs first (a fresh worker: its
# growth figure starts from the same place as the full run's); fairness last, since it
# restarts worker-default with 10 threads.
QUICK = Sizes(
    inflight_deadline_s=35,
    memory_large=300,
    memory_deadline_s=60,
    fairness_backlog=200,
    fairness_deadline_s=10,
    capacity_seconds=4,
    capacity_rounds=1,
    open_loop_rates=(100.0,),
    open_loop_seconds=4,
    dispatch_tasks=40,
    dispatch_rate=10.0,
    priority_backlog=200,
    priority_batch=20,
    priority_deadline_s=10,
    sse_latency_ms=60_000,
    sse_seconds=4,
    memory_pause_s=1,
    warm_seconds=1,
    healthz_seconds=2,
    naive_waves=2,
    sse_warm_seconds=1,
    sse_stop_after_load=True,
    fresh_web_after_naive=True,
    shared_order=("memory", "inflight", "submit", "dispatch", "priority", "sse", "fairness"),
)


def client(*args: str) -> dict[str, Any]:
    """Run the asyncio load client in its own process; its JSON answer."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.client", *args], cwd=ROOT, env=base_env(), capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"bench.client failed: {out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def submit(
    stack: Stack,
    key: str,
    count: int,
    batch: str,
    *,
    concurrency: int = 32,
    rate: float | None = None,
    directive: str = "",
) -> Any:
    args = ["burst", f"{stack.web}/api/v1/ai-tasks/", key, str(count), "--batch", batch]
    args += ["--concurrency", str(concurrency)]
    if directive:
        args += ["--directive", directive]
    if rate:
        args += ["--rate", str(rate)]
    return client(*args)


def batch_state(db: Database, batch: str) -> tuple[int, int, int]:
    """(tasks, terminal, processing) of one batch (tagged in metadata)."""
    row = db.rows(
        "SELECT count(*), count(*) FILTER (WHERE status IN ('done', 'failed', 'cancelled')), "
        "count(*) FILTER (WHERE status = 'processing') FROM llm_aitask "
        "WHERE created_at > now() - interval '1 hour' AND metadata->>'bench' = %s",
        batch,
    )[0]
    return int(row[0]), int(row[1]), int(row[2])


def wait_terminal(
    db: Database, batch: str, count: int, deadline_s: float, abort: threading.Event | None = None
) -> tuple[bool, float]:
    start = time.monotonic()
    while time.monotonic() - start < deadline_s and not (abort and abort.is_set()):
        _, terminal, _ = batch_state(db, batch)
        if terminal >= count:
            return True, time.monotonic() - start
        time.sleep(0.25)
    return False, time.monotonic() - start


class Sampler(threading.Thread):
    """Samples, twice a second, calls in flight (``processing`` rows), the stack's
    PostgreSQL connections and the RSS of one process group; keeps the peaks."""

    def __init__(self, pgid: int, batch: str) -> None:
        super().__init__(daemon=True)
        self.pgid, self.batch = pgid, batch
        self.stop = threading.Event()
        self.peak_in_flight = 0
        self.rss_at_peak = 0.0
        self.peak_rss = 0.0
        self.peak_connections = 0
        self.samples: list[dict[str, float]] = []

    def run(self) -> None:
        db = Database()
        started = time.monotonic()
        try:
            while not self.stop.is_set():
                _, _, in_flight = batch_state(db, self.batch)
                memory = group_memory(self.pgid)
                connections = db.connections()
                if in_flight > self.peak_in_flight or (
                    in_flight == self.peak_in_flight and memory.rss_mib > self.rss_at_peak
                ):
                    self.peak_in_flight, self.rss_at_peak = in_flight, memory.rss_mib
                self.peak_rss = max(self.peak_rss, memory.rss_mib)
                self.peak_connections = max(self.peak_connections, connections)
                self.samples.append(
                    {
                        "t": round(time.monotonic() - started, 2),
                        "in_flight": in_flight,
                        "rss_mib": round(memory.rss_mib, 1),
                        "pss_mib": round(memory.pss_mib, 1),
                        "connections": connections,
                    }
                )
                self.stop.wait(0.5)
        finally:
            db.close()


def inflight(keys: Keys, sizes: Sizes) -> tuple[list[Figure], dict[str, Any]]:
    """Issue 7: N tasks x 10 s submitted at once against one worker-default process group."""
    n, latency = sizes.inflight_tasks, sizes.inflight_latency_ms
    with for_scenario(latency) as (stack, db, directive):
        pgid = stack.pgid("worker-default")
        idle = group_memory(pgid)
        batch = f"inflight-{uuid.uuid4().hex[:8]}"
        sampler = Sampler(pgid, batch)
        sampler.start()
        first_submit = time.monotonic()
        burst = submit(stack, keys.a, n, batch, concurrency=64, directive=directive)
        accepted = int(burst["submitted"])  # a rejected submit would otherwise hold the wait to the deadline
        finished, _ = wait_terminal(
            db, batch, accepted, sizes.inflight_deadline_s - (time.monotonic() - first_submit), stack.aborted
        )
        elapsed = time.monotonic() - first_submit
        _, terminal, _ = batch_state(db, batch)
        done = int(
            db.scalar("SELECT count(*) FROM llm_aitask WHERE metadata->>'bench' = %s AND status = 'done'", batch)
        )
        sampler.stop.set()
        sampler.join()
    s = "in-flight"
    if finished:
        all_done = Figure(
            s,
            f"{n} tasks x {latency / 1000:.0f} s: first submit → all terminal",
            elapsed,
            "s",
            30,
            note=f"{done} done, {terminal - done} failed or cancelled, {n - accepted} not accepted",
        )
    else:
        projected = elapsed * n / max(done, 1)
        all_done = Figure(
            s,
            f"{n} tasks x {latency / 1000:.0f} s: first submit → all done (projected)",
            projected,
            "s",
            30,
            note=f"only {done} of {n} done after {elapsed:.0f} s; projected from that rate",
        )
    gib = sampler.rss_at_peak / 1024 if sampler.rss_at_peak else float("nan")
    figures = [
        all_done,
        Figure(s, "submit rate of the burst (64 connections)", burst["rate"], "tasks/s", note=_errors(burst)),
        Figure(s, "peak calls in flight (processing rows)", sampler.peak_in_flight, "calls", 200, "higher"),
        Figure(
            s,
            "worker-default RSS at that peak (sum over group)",
            sampler.rss_at_peak,
            "MiB",
            note=f"idle {idle.rss_mib:.0f} MiB, {idle.processes} processes",
        ),
        Figure(
            s, "calls in flight per GiB of worker-default RSS", sampler.peak_in_flight / gib, "calls/GiB", 200, "higher"
        ),
        Figure(s, "PostgreSQL connections of the stack (peak)", sampler.peak_connections, "conns", 50),
    ]
    details = {
        "tasks": n,
        "latency_ms": latency,
        "finished": finished,
        "elapsed_s": elapsed,
        "done": done,
        "terminal": terminal,
        "burst": {k: v for k, v in burst.items() if k != "ids"},
        "idle_memory": idle.__repr__(),
        "peak_rss_mib": sampler.peak_rss,
        "samples": sampler.samples,
    }
    return figures, details


def _errors(result: dict[str, Any]) -> str:
    errors = result.get("errors") or {}
    return "0 errors" if not errors else "errors " + ", ".join(f"{k}: {v}" for k, v in errors.items())


WARM_TASKS = 300  # worker-default's threads (WORKER_DEFAULT_CONCURRENCY)


def memory(keys: Keys, sizes: Sizes) -> tuple[list[Figure], dict[str, Any]]:
    """Issue 7 item 7: worker-default RSS after 100 tasks and after 5,000 (short latency),
    once every thread of the pool has started (a warm-up of 300 concurrent calls)."""
    small, large = sizes.memory_small, sizes.memory_large
    with for_scenario(50) as (stack, db, directive):
        pgid, web = stack.pgid("worker-default"), stack.pgid("web")
        # Warm-up: a threads pool starts a thread the first time concurrency needs one, so
        # without this the growth below measures the pool starting (about 175 KiB per
        # thread: 26 threads after 100 tasks, 231 after 5,000 in an unwarmed run), not
        # what the tasks leave behind. 300 calls of 5 s at once start every thread.
        warm = f"memory-warm-{uuid.uuid4().hex[:8]}"
        warmed = submit(stack, keys.a, WARM_TASKS, warm, concurrency=64, directive="#fake:sleep=5000")
        wait_terminal(db, warm, int(warmed["submitted"]), sizes.memory_deadline_s, stack.aborted)
        warm_memory = group_memory(pgid)
        batch = f"memory-{uuid.uuid4().hex[:8]}"
        cpu_worker, cpu_web = group_cpu_s(pgid), group_cpu_s(web)
        first = submit(stack, keys.a, small, batch, concurrency=16, directive=directive)
        ok_small, _ = wait_terminal(db, batch, int(first["submitted"]), sizes.memory_deadline_s, stack.aborted)
        time.sleep(sizes.memory_pause_s)
        after_small = group_memory(pgid)
        second_started = time.monotonic()
        second = submit(stack, keys.a, large - small, batch, concurrency=16, directive=directive)
        accepted = int(first["submitted"]) + int(second["submitted"])
        ok_large, _ = wait_terminal(db, batch, accepted, sizes.memory_deadline_s, stack.aborted)
        seconds = time.monotonic() - second_started
        time.sleep(sizes.memory_pause_s)
        after_large = group_memory(pgid)
        cpu_worker, cpu_web = group_cpu_s(pgid) - cpu_worker, group_cpu_s(web) - cpu_web
        total, terminal, _ = batch_state(db, batch)
    growth = (after_large.rss_mib / after_small.rss_mib - 1) * 100
    s = "memory"
    note = "" if ok_small and ok_large else f"only {terminal} of {large} finished in time"
    figures = [
        Figure(
            s,
            f"worker-default RSS after {small} tasks",
            after_small.rss_mib,
            "MiB",
            note=f"{after_small.processes} processes, {after_small.threads} threads, PSS {after_small.pss_mib:.0f} MiB",
        ),
        Figure(
            s,
            f"worker-default RSS after {large:,} tasks",
            after_large.rss_mib,
            "MiB",
            note=f"{after_large.processes} processes, {after_large.threads} threads, PSS {after_large.pss_mib:.0f} MiB",
        ),
        Figure(s, f"RSS growth {small} → {large:,} tasks", growth, "%", 10, note=note),
        Figure(
            s,
            "worker-default throughput at 50 ms latency",
            (large - small) / seconds,
            "tasks/s",
            note=f"submitted at {second['rate']:.0f}/s",
        ),
        Figure(s, "CPU per task in worker-default (excl. the wait)", cpu_worker / max(terminal, 1) * 1000, "ms"),
        Figure(s, "CPU per task in web (submit)", cpu_web / max(total, 1) * 1000, "ms"),
    ]
    details = {
        "after_warm_up": warm_memory.__repr__(),
        "after_small": after_small.__repr__(),
        "after_large": after_large.__repr__(),
        "tasks": total,
        "terminal": terminal,
        "cpu_worker_s": cpu_worker,
        "cpu_web_s": cpu_web,
    }
    return figures, details


FAIRNESS_SLOTS = 10


def fairness(keys: Keys, sizes: Sizes) -> tuple[list[Figure], dict[str, Any]]:
    """Issue 7 item 5: org A has a backlog of 2,000 tasks; org B submits one.

    The pool is cut to FAIRNESS_SLOTS threads: 300 threads drain 1 s calls faster than one
    client can submit them, so A would never have a backlog for B to wait behind."""
    latency = sizes.fairness_latency_ms
    with for_scenario(latency, {"WORKER_DEFAULT_CONCURRENCY": str(FAIRNESS_SLOTS)}) as (stack, db, directive):
        batch_a, batch_b = f"fair-a-{uuid.uuid4().hex[:8]}", f"fair-b-{uuid.uuid4().hex[:8]}"
        backlog = submit(stack, keys.a, sizes.fairness_backlog, batch_a, concurrency=32, directive=directive)
        total_a, terminal_a, _ = batch_state(db, batch_a)
        b = submit(stack, keys.b, 1, batch_b, concurrency=1, directive=directive)
        task_b = b["ids"][0]
        deadline = time.monotonic() + sizes.fairness_deadline_s
        wait = float("nan")
        while time.monotonic() < deadline and not stack.aborted.is_set():
            row = db.rows("SELECT extract(epoch FROM started_at - created_at) FROM llm_aitask WHERE id = %s", task_b)
            if row and row[0][0] is not None:
                wait = float(row[0][0])
                break
            time.sleep(0.2)
        waited = float(db.scalar("SELECT extract(epoch FROM now() - created_at) FROM llm_aitask WHERE id = %s", task_b))
    target = latency / 1000 + 1
    started = wait == wait  # not NaN
    figure = Figure(
        "fairness",
        f"org B's wait behind org A's backlog ({latency / 1000:.0f} s calls)",
        wait if started else waited,
        "s",
        target,
        note=f"{FAIRNESS_SLOTS} slots; A had {total_a - terminal_a:,} of {total_a:,} tasks open when B submitted"
        + ("" if started else f"; B had not started after {waited:.0f} s (a lower bound)"),
    )
    details = {
        "backlog": {k: v for k, v in backlog.items() if k != "ids"},
        "a_open_at_b_submit": total_a - terminal_a,
        "b_started": started,
        "b_wait_s": wait if started else None,
        "b_waited_at_least_s": waited,
    }
    return [figure], details


def dispatch(keys: Keys, sizes: Sizes) -> tuple[list[Figure], dict[str, Any]]:
    """Issue 9: commit → started_at and the overhead around the provider call, idle pools."""
    latency = sizes.dispatch_latency_ms
    with for_scenario(latency) as (stack, db, directive):
        batch = f"dispatch-{uuid.uuid4().hex[:8]}"
        submit(stack, keys.a, sizes.dispatch_tasks, batch, concurrency=4, rate=sizes.dispatch_rate, directive=directive)
        wait_terminal(db, batch, sizes.dispatch_tasks, 60, stack.aborted)
        rows = db.rows(
            "SELECT extract(epoch FROM started_at - created_at), extract(epoch FROM completed_at - created_at) "
            "FROM llm_aitask WHERE metadata->>'bench' = %s AND status = 'done'",
            batch,
        )
    starts = [float(r[0]) * 1000 for r in rows]
    overheads = [float(r[1]) * 1000 - latency for r in rows]
    s = "dispatch"
    n = f"{len(rows)} tasks at {sizes.dispatch_rate:.0f}/s, {latency} ms calls"
    figures = [
        Figure(s, "created → started p50", percentile(starts, 50), "ms", note=n),
        Figure(s, "created → started p95", percentile(starts, 95), "ms", 50),
        Figure(s, "completed - created - latency p50", percentile(overheads, 50), "ms"),
        Figure(s, "completed - created - latency p95", percentile(overheads, 95), "ms", 100),
    ]
    return figures, {"tasks": len(rows), "latency_ms": latency}
