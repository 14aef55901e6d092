"""Issue 9: submit capacity (wrk, closed loop) against the floor and naive baselines
served by the same web server in the same run, and open-loop latency (asyncio client)."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import redis

from bench import wrk
from bench.report import Figure
from bench.scenarios import Keys, Sizes, client
from bench.stack import REDIS_URL, Stack, for_scenario

BODY = {"prompt": "Benchmark the submit path, please.", "cache": False, "metadata": {"bench": "capacity"}}


def body(directive: str) -> dict[str, object]:
    """BODY, its prompt ending with ``directive`` (the shared stack's latency) when given."""
    return {**BODY, "prompt": f"{BODY['prompt']} {directive}".strip()}


def capacity(keys: Keys, sizes: Sizes) -> tuple[list[Figure], dict[str, Any]]:
    latency = sizes.capacity_latency_ms
    connections, seconds = 64, sizes.capacity_seconds
    with for_scenario(latency) as (stack, _db, directive):
        payload = body(directive)  # the same body for all three: the naive view's call reads the directive too
        targets = {
            "platform": (f"{stack.web}/api/v1/ai-tasks/", wrk.post_script(payload, keys.a)),
            "floor": (f"{stack.web}/bench/floor/", wrk.post_script(payload)),
            "naive": (f"{stack.web}/bench/naive/", wrk.post_script(payload)),
        }
        # Warm the paths (imports, connections) and fill the pools: "workers busy". Not the
        # naive view: its warm-up requests would still hold threads when the run starts.
        for name, (url, script) in targets.items():
            if name != "naive":
                wrk.run(url, seconds=sizes.warm_seconds, connections=8, script=script, threads=1)
        # A yardstick of the machine's state in this run: the cheapest request there is.
        healthz = wrk.run(
            f"{stack.web}/healthz", seconds=sizes.healthz_seconds, connections=connections, script=wrk.get_script()
        )
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        # Each naive request takes the whole latency: run long enough for several waves
        # (four in the full run; the quick run's two, plus a second so the second wave's
        # answers land inside the run).
        waves = sizes.naive_waves
        naive_seconds = max(seconds, waves * latency // 1000 + (0 if waves >= 4 else 1))
        web_restart_s = 0.0

        def fresh_web() -> None:  # drop the naive requests still queued in gunicorn (Sizes)
            nonlocal web_restart_s
            started = time.monotonic()
            stack.restart(("web",), stack.role_env["web"])
            url, script = targets["platform"]
            wrk.run(url, seconds=sizes.warm_seconds, connections=8, script=script, threads=1)
            web_restart_s += round(time.monotonic() - started, 1)

        for _ in range(sizes.capacity_rounds):  # rounds alternate, so drift hits all three alike
            for name, (url, script) in targets.items():
                duration = naive_seconds if name == "naive" else seconds
                rounds[name].append(wrk.run(url, seconds=duration, connections=connections, script=script))
                if name == "naive" and sizes.fresh_web_after_naive:  # before the next round, the open loop
                    fresh_web()

        def offer(url: str, rate: float) -> dict[str, Any]:
            return client(
                "open",
                url,
                "--key",
                keys.a,
                "--rate",
                str(rate),
                "--seconds",
                str(sizes.open_loop_seconds),
                "--batch",
                f"open-{uuid.uuid4().hex[:8]}",
                *(["--directive", directive] if directive else []),
            )

        # The platform at each rate, then the floor view at the same rate on the same
        # backlog: whether the machine could meet the latency target with any submit path.
        open_loop, floor_open_loop = [], []
        for rate in sizes.open_loop_rates:
            open_loop.append(offer(targets["platform"][0], rate))
            floor_open_loop.append(offer(targets["floor"][0], rate))
        # The front door alone: the pools (and beat) stopped, as if web had cores of its
        # own; no target (the scenario's targets are with the pools busy). Last, because
        # the pools then resume a backlog whose leases ran out while they were stopped.
        with pools_stopped(stack):
            front = {
                name: wrk.run(targets[name][0], seconds=seconds, connections=connections, script=targets[name][1])
                for name in ("platform", "floor")
            }
            front_open = offer(targets["platform"][0], sizes.open_loop_rates[0])

    def mean(name: str, key: str) -> float:
        values = [r[key] for r in rounds[name] if not math.isnan(r[key])]
        return statistics.fmean(values) if values else float("nan")

    rps = {name: mean(name, "rps") for name in targets}
    errors = {name: sum(r["errors"] for r in rounds[name]) for name in targets}
    s = "submit"
    where = f"wrk 2 threads x {connections} connections x {seconds} s x {sizes.capacity_rounds} rounds"
    figures = [
        Figure(s, "POST /api/v1/ai-tasks/ closed-loop rate", rps["platform"], "req/s", note=where),
        Figure(s, "platform p95 (closed loop)", mean("platform", "p95_ms"), "ms", note=_pcts(rounds["platform"])),
        Figure(s, "platform errors (non-2xx, socket, timeout)", errors["platform"], "", 0),
        Figure(s, "floor view closed-loop rate", rps["floor"], "req/s", note=_pcts(rounds["floor"])),
        Figure(
            s,
            "naive view closed-loop rate",
            rps["naive"],
            "req/s",
            note=f"{latency} ms inline call, {naive_seconds} s; " + _pcts(rounds["naive"]),
        ),
        Figure(s, "GET /healthz rate (yardstick of the machine)", healthz["rps"], "req/s", note=_pcts([healthz])),
        Figure(s, "platform / floor", rps["platform"] / max(rps["floor"], 1e-9), "x", 0.5, "higher"),
        Figure(s, "platform / naive", rps["platform"] / max(rps["naive"], 1e-9), "x", 50, "higher"),
    ]
    for result, floor in zip(open_loop, floor_open_loop, strict=True):
        rate = result["offered_rps"]
        note = _open_note(result)
        if sizes.fresh_web_after_naive:
            note += "; on a web role restarted after each naive round"
        target = 50.0 if rate == 100 else None
        figures.append(Figure(s, f"open loop {rate:.0f} req/s offered: p95", result["p95_ms"], "ms", target, note=note))
        figures.append(
            Figure(
                s,
                f"floor view, open loop {rate:.0f} req/s offered: p95 (yardstick)",
                floor["p95_ms"],
                "ms",
                note=_open_note(floor) + "; right after the platform's open loop, whose tasks joined the backlog",
            )
        )
    front_rps = {name: front[name]["rps"] for name in front}
    figures += [
        Figure(
            s,
            "pools stopped (front door alone): platform / floor",
            front_rps["platform"] / max(front_rps["floor"], 1e-9),
            "x",
            note=f"{front_rps['platform']:.0f} against {front_rps['floor']:.0f} req/s, one round each; "
            f"platform {_pcts([front['platform']])}",
        ),
        Figure(
            s,
            f"pools stopped: open loop {front_open['offered_rps']:.0f} req/s offered: p95",
            front_open["p95_ms"],
            "ms",
            note=_open_note(front_open),
        ),
    ]
    details = {
        "front_door": {"wrk": front, "open_loop": front_open},
        "wrk": rounds,
        "healthz": healthz,
        "open_loop": open_loop,
        "floor_open_loop": floor_open_loop,
        "latency_ms": latency,
    }
    return figures, details | {"naive_seconds": naive_seconds, "web_restart_s": web_restart_s}


@contextlib.contextmanager
def pools_stopped(stack: Stack) -> Iterator[None]:
    """SIGSTOP the worker pools and beat for the block, SIGCONT after. Their slot
    registrations are kept alive meanwhile (a stopped pool cannot renew them): without
    them the submit path would hold every task without asking PostgreSQL for room, a
    lighter submit than with the pools running (llm.services.dispatch.window)."""
    roles: list[str] = [r for r in ("worker-priority", "worker-default", "worker-low", "beat") if r in stack.role_env]
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    registered: dict[str, dict[str, str]] = {
        key: cast("dict[str, str]", client.hgetall(key)) for key in client.scan_iter("sy:pool-slots:*")
    }
    stopped: list[str] = []
    try:
        for key, entries in registered.items():  # as if renewed until an hour from now
            for node, value in entries.items():
                client.hset(key, node, f"{value.partition(':')[0]}:{time.time() + 3600:.0f}")
        for role in roles:
            os.killpg(stack.pgid(role), signal.SIGSTOP)
            stopped.append(role)
        yield
    finally:
        for role in stopped:
            os.killpg(stack.pgid(role), signal.SIGCONT)
        # Not the values from before the stop: their expiry may have passed meanwhile, and
        # until the pools renew them (within seconds) the gate would hold every task.
        for key, entries in registered.items():
            for node, value in entries.items():
                client.hset(key, node, f"{value.partition(':')[0]}:{time.time() + 15:.0f}")
        client.close()


def _open_note(result: dict[str, Any]) -> str:
    note = f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, {result['errors']} errors"
    if result.get("error_kinds"):  # e.g. ReadError: a keep-alive connection the server closed
        note += " (" + ", ".join(f"{kind} {count}" for kind, count in sorted(result["error_kinds"].items())) + ")"
    if result["client_late"]:
        note += f", client late on {result['client_late']} sends"
    return note


def _pcts(results: list[dict[str, float]]) -> str:
    def avg(key: str) -> float:
        return statistics.fmean(r[key] for r in results)

    errors = sum(r["errors"] for r in results)
    return f"p50 {avg('p50_ms'):.0f} / p95 {avg('p95_ms'):.0f} / p99 {avg('p99_ms'):.0f} ms, {errors:.0f} errors"
