"""wrk: closed-loop HTTP rates (a separate process, written in C)."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from typing import Any

# wrk's --latency prints no p95: the script's done() prints the percentiles we report (µs).
_DONE = """
done = function(summary, latency, requests)
  for _, p in pairs({50, 95, 99}) do
    io.write(string.format("bench-p%d %d\\n", p, latency:percentile(p)))
  end
end
"""


def _write(lines: list[str]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n" + _DONE)
    return script.name


def post_script(body: dict[str, Any], key: str | None = None) -> str:
    """A wrk Lua script that POSTs ``body`` as JSON (with the API key when given)."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps(body))}",
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    if key:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {key}"')
    return _write(lines)


def get_script(key: str | None = None) -> str:
    return _write([f'wrk.headers["Authorization"] = "Bearer {key}"'] if key else [])


def _ms(out: str, pct: int) -> float:
    match = re.search(rf"^bench-p{pct} (\d+)$", out, re.MULTILINE)
    return int(match.group(1)) / 1000 if match else float("nan")


def run(
    url: str, *, seconds: int, connections: int, script: str, threads: int = 2, timeout_s: int = 30
) -> dict[str, float]:
    """Requests/s, latency percentiles and errors (non-2xx/3xx, socket errors, timeouts)."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", f"--timeout={timeout_s}s", "-s", script]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    socket_errors = sum(int(g) for g in sockets.groups()) if sockets else 0
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": float(total.group(1)) if total else 0.0,
        "p50_ms": _ms(out, 50),
        "p95_ms": _ms(out, 95),
        "p99_ms": _ms(out, 99),
        "errors": float((int(non_2xx.group(1)) if non_2xx else 0) + socket_errors),
        "connections": float(connections),
        "seconds": float(seconds),
    }
