"""Memory per waiting call for the three ways to hold many provider calls in one process:
OS threads (Celery's ``threads`` pool), gevent greenlets, asyncio tasks.

Each variant runs in a fresh interpreter that first imports what a worker imports
(Django set up with the project's settings, the Celery app, httpx), then starts N calls
that each wait 3 s the way a provider call waits (a blocking sleep in a thread, a
cooperative sleep for gevent and asyncio) and reads VmRSS while all N wait. The figure is
(RSS while waiting - RSS before) / N, and calls in flight per GiB of the whole process.

Usage: .venv/bin/python bench/pool_memory.py [--calls 300] [--gevent-site DIR]
(gevent is not a project dependency: pass a site-packages directory that has it, e.g.
``python -m venv /tmp/g && /tmp/g/bin/pip install gevent``, DIR=/tmp/g/lib/python3.13/site-packages).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time
variant, n = sys.argv[1], int(sys.argv[2])
if variant == "gevent":
    from gevent import monkey; monkey.patch_all()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "true")
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
import django; django.setup()
import config.celery, httpx  # what a worker process holds
before = rss()
if variant == "threads":
    import threading
    threads = [threading.Thread(target=time.sleep, args=(3,)) for _ in range(n)]
    for t in threads: t.start()
    time.sleep(1.5); during = rss()
    for t in threads: t.join()
elif variant == "gevent":
    import gevent
    jobs = [gevent.spawn(gevent.sleep, 3) for _ in range(n)]
    gevent.sleep(1.5); during = rss(); gevent.joinall(jobs)
else:
    import asyncio
    async def main():
        tasks = [asyncio.create_task(asyncio.sleep(3)) for _ in range(n)]
        await asyncio.sleep(1.5); d = rss(); await asyncio.gather(*tasks); return d
    during = asyncio.run(main())
print(json.dumps({"variant": variant, "calls": n, "before": before, "during": during}))
"""


def measure(variant: str, calls: int, extra_path: str = "") -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": ":".join(p for p in (f"{ROOT / 'src'}:{ROOT}", extra_path) if p)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, str(calls)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    per_call = (row["during"] - row["before"]) / calls
    return {
        "variant": variant,
        "calls": calls,
        "rss_mib": round(row["during"] / 2**20, 1),
        "kib_per_call": round(per_call / 1024, 1),
        "calls_per_gib": round(calls / (row["during"] / 2**30)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--gevent-site", default="")
    args = parser.parse_args()
    rows = [measure(v, args.calls) for v in ("threads", "asyncio")]
    if args.gevent_site:
        rows.append(measure("gevent", args.calls, args.gevent_site))
    print("| pool | calls | process RSS (MiB) | KiB per waiting call | calls per GiB of RSS |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['calls']} | {r['rss_mib']} | {r['kib_per_call']} | {r['calls_per_gib']} |")


if __name__ == "__main__":
    main()
