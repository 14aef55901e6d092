"""Serving comparison (``--scenario serving``): WSGI (gunicorn, gthread) against ASGI
(uvicorn) in one run, for a trivial view, an authenticated read and the submit path.
Figures are relative to the first variant (the baseline), measured in the same run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from bench import wrk
from bench.report import Figure
from bench.scenarios import Keys, Sizes
from bench.stack import ROOT, Database, base_env, free_port, purge_queues

BIN = os.path.dirname(sys.executable)


def variants(port: int) -> dict[str, list[str]]:
    return {
        "wsgi gunicorn gthread (2x4)": [
            os.path.join(BIN, "gunicorn"),
            "config.wsgi:application",
            *("-k", "gthread", "-w", "2", "--threads", "4", "-b", f"127.0.0.1:{port}", "--log-level", "warning"),
        ],
        "asgi uvicorn (2 workers)": [
            os.path.join(BIN, "uvicorn"),
            "config.asgi:application",
            *("--workers", "2", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"),
            *("--log-level", "warning"),
        ],
    }


def serving(keys: Keys, sizes: Sizes) -> tuple[list[Figure], dict[str, Any]]:
    if not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed")
    paths = {
        "GET /healthz": ("/healthz", wrk.get_script()),
        "GET /api/v1/me/": ("/api/v1/me/", wrk.get_script(keys.a)),
        "POST /api/v1/ai-tasks/": (
            "/api/v1/ai-tasks/",
            wrk.post_script({"prompt": "Benchmark the submit path, please.", "cache": False}, keys.a),
        ),
    }
    seconds = max(sizes.capacity_seconds // 2, 5)
    results: dict[str, dict[str, dict[str, float]]] = {}
    port = free_port()
    for name, command in variants(port).items():
        server = subprocess.Popen(command, cwd=ROOT, env=base_env(), start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start")
                time.sleep(0.2)
            results[name] = {}
            for label, (path, script) in paths.items():
                url = f"http://127.0.0.1:{port}{path}"
                wrk.run(url, seconds=2, connections=16, script=script)
                results[name][label] = wrk.run(url, seconds=seconds, connections=16, script=script)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
    db = Database()
    db.cancel_open()  # nobody runs the submitted tasks
    db.close()
    purge_queues()
    baseline = next(iter(results))
    figures = [
        Figure(
            "serving",
            f"{name}: {label}",
            row["rps"],
            "req/s",
            note=f"{row['rps'] / results[baseline][label]['rps']:.2f}x baseline, p50 {row['p50_ms']:.1f} ms, "
            f"p99 {row['p99_ms']:.1f} ms, {row['errors']:.0f} errors",
        )
        for name, rows in results.items()
        for label, row in rows.items()
    ]
    return figures, {"serving": results}
