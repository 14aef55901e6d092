"""Serving benchmark: WSGI (gunicorn, gthread) against ASGI (uvicorn) in one run.

For each server variant it starts the real server on this machine, drives it with wrk
over loopback, and prints requests/s and latency for three paths: a trivial view
(/healthz), an authenticated read (/api/v1/me/) and the submit path
(POST /api/v1/ai-tasks/, which reserves budget, inserts a task and publishes to the
broker). Figures are relative to the first variant (the baseline), measured in the
same run, so the machine's speed cancels out. It asserts nothing: it reports.

Usage: make bench   (or: .venv/bin/python bench/run.py [--seconds 8] [--connections 16])
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DB = "switchyard_bench"
ENV = {
    **os.environ,
    "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}",
    "DJANGO_SETTINGS_MODULE": "config.settings",
    "DEBUG": "false",
    "SECRET_KEY": "bench-secret-key-bench-secret-key-bench-secret-key",
    "WEBHOOK_SIGNING_SECRETS": "bench-webhook-secret-bench-webhook-secret",
    "METRICS_TOKEN": "bench-metrics-token-bench-metrics-token",
    "ALLOWED_HOSTS": "127.0.0.1,localhost",
    "DATABASE_URL": f"postgres:///{DB}",
    "REDIS_URL": "redis://127.0.0.1:6379/10",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/11",
    "LOG_LEVEL": "WARNING",
    "API_THROTTLE_RATE": "100000000/min",
    "ORG_REQUESTS_PER_MINUTE": "0",  # the bench measures the pipeline, not the tenant limits
    "KEY_TOKENS_PER_MINUTE": "0",
    "ORG_TOKENS_PER_MINUTE": "0",
    "STATIC_ROOT": tempfile.mkdtemp(prefix="sy-static-"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def variants(port: int) -> dict[str, list[str]]:
    return {
        "wsgi gunicorn gthread (2 workers x 4 threads)": [
            str(BIN / "gunicorn"),
            "config.wsgi:application",
            "-k",
            "gthread",
            "-w",
            "2",
            "--threads",
            "4",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
        ],
        "asgi uvicorn (2 workers)": [
            str(BIN / "uvicorn"),
            "config.asgi:application",
            "--workers",
            "2",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
    }


def manage(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=ENV, check=True, capture_output=True, text=True
    )
    return result.stdout


def prepare() -> str:
    subprocess.run(["createdb", DB], capture_output=True, check=False)
    manage("migrate", "--noinput")
    key = manage("create_api_key", "bench@switchyard.local", "--org", "Bench").strip().splitlines()[-1]
    manage("set_budget", "Bench", "100000000")
    return key


def wrk(url: str, *, seconds: int, connections: int, script: str | None) -> dict[str, float]:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if script:
        command[1:1] = ["-s", script]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)

    def latency(pct: str) -> float:
        match = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out)
        if not match:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {
        "rps": rps,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    key = prepare()
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        body = json.dumps({"prompt": "Benchmark the submit path, please.", "cache": False})
        lua.write(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
            f'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as auth:
        auth.write(f'wrk.headers["Authorization"] = "Bearer {key}"\n')
    paths = {
        "GET /healthz": ("/healthz", None),
        "GET /api/v1/me/": ("/api/v1/me/", auth.name),
        "POST /api/v1/ai-tasks/": ("/api/v1/ai-tasks/", lua.name),
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    port = free_port()
    for name, command in variants(port).items():
        server = subprocess.Popen(command, cwd=ROOT, env=ENV, start_new_session=True)
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
                wrk(f"http://127.0.0.1:{port}{path}", seconds=2, connections=args.connections, script=script)
                results[name][label] = wrk(
                    f"http://127.0.0.1:{port}{path}", seconds=args.seconds, connections=args.connections, script=script
                )
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=20)
    baseline = next(iter(results))
    print(f"\n{'variant':48} {'path':24} {'req/s':>9} {'vs base':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, rows in results.items():
        for label, row in rows.items():
            ratio = row["rps"] / results[baseline][label]["rps"]
            print(
                f"{name:48} {label:24} {row['rps']:9.0f} {ratio:8.2f} {row['p50_ms']:8.2f} "
                f"{row['p99_ms']:8.2f} {row['non_2xx']:8.0f}"
            )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"serving-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(json.dumps(results, indent=2))
    import redis

    redis.Redis.from_url(ENV["CELERY_BROKER_URL"]).flushdb()  # drop the tasks nobody will run
    return 0


if __name__ == "__main__":
    sys.exit(main())
