"""The benchmark harness: one entry point for the figures of issues 7 and 9.

It starts the real stack itself (every role through ``bin/switchyard``, as production
runs it: web with DEBUG=false, stream, the three worker pools, beat; the fake provider
with the scenario's latency): a fresh stack for each scenario in the full run, one stack
for all of them in the quick run (``bench.stack.shared``). It drives the stack from
separate processes (wrk; an asyncio httpx client), prints every figure with its target
and "met" / "missed by X", and writes ``bench/results/<date>.json`` plus a markdown
table that ``docs/benchmarks.md`` shows. It asserts nothing: it reports.

Scenarios (table order): inflight, memory, fairness, submit, dispatch, priority, sse
(the quick run runs them in ``QUICK.shared_order``); ``serving`` (WSGI against ASGI)
runs only when named.

Usage: make bench | make bench-quick | python -m bench.run [--quick] [--scenario NAME ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import report, stack
from bench.capacity import capacity
from bench.priority import priority
from bench.report import Figure
from bench.scenarios import QUICK, Keys, Sizes, dispatch, fairness, inflight, memory
from bench.serving import serving
from bench.sse import sse
from bench.stack import DB, ROOT, SWITCHYARD, Database, base_env, log

Scenario = Callable[[Keys, Sizes], tuple[list[Figure], dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {
    "inflight": inflight,
    "memory": memory,
    "fairness": fairness,
    "submit": capacity,
    "dispatch": dispatch,
    "priority": priority,
    "sse": sse,
    "serving": serving,
}
DEFAULT = ("inflight", "memory", "fairness", "submit", "dispatch", "priority", "sse")


# The management commands of prepare(), in one interpreter (one Django start-up, not five).
_PREPARE = """
import io, json, django
django.setup()
from django.core.management import call_command
call_command("migrate", "--noinput", verbosity=0)
keys = {}
for email, org in (("bench@switchyard.local", "Bench"), ("bench-b@switchyard.local", "Bench B")):
    out = io.StringIO()
    call_command("create_api_key", email, "--org", org, stdout=out, stderr=io.StringIO())
    keys[org] = out.getvalue().strip().splitlines()[-1]
    call_command("set_budget", org, "100000000", stdout=io.StringIO())
print(json.dumps(keys))
"""


def prepare() -> Keys:
    """Migrate the bench database and issue one API key per organization (budgets that
    never run out: the budget check still runs on every submit). First the code is
    byte-compiled, as the image does at build time: where PYTHONDONTWRITEBYTECODE is set
    (the image, some shells), every process would compile each module whose .pyc is
    missing or stale at every start, gunicorn's recycled workers included."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", "src", "contracts", "bench"], cwd=ROOT, check=True)
    subprocess.run(["createdb", DB], capture_output=True, check=False)
    out = subprocess.run(
        [sys.executable, "-c", _PREPARE], cwd=ROOT, env=base_env(), check=True, capture_output=True, text=True
    )
    issued = json.loads(out.stdout.strip().splitlines()[-1])
    key_a, key_b = issued["Bench"], issued["Bench B"]
    db = Database()
    org_a = str(db.scalar("SELECT id FROM users_organization WHERE name = 'Bench'"))
    org_b = str(db.scalar("SELECT id FROM users_organization WHERE name = 'Bench B'"))
    db.close()
    return Keys(a=key_a, b=key_b, org_a=org_a, org_b=org_b)


def worker_pool() -> str:
    """The worker-default command line bin/switchyard builds (pool and concurrency)."""
    env = {**base_env(), "SWITCHYARD_PRINT_ONLY": "1"}
    line = subprocess.run([SWITCHYARD, "worker-default"], env=env, capture_output=True, text=True).stdout.strip()
    words = line.split()
    pool = words[words.index("-P") + 1] if "-P" in words else "prefork"
    if "--pool" in words:
        pool = words[words.index("--pool") + 1]
    pool = next((w.split("=", 1)[1] for w in words if w.startswith(("--pool=", "-P="))), pool)
    concurrency = words[words.index("--concurrency") + 1] if "--concurrency" in words else "?"
    return f"{pool}, concurrency {concurrency}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts and shorter runs")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="run only these (repeatable)")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for every stack"
    )
    parser.add_argument("--no-docs", action="store_true", help="do not update the table in docs/benchmarks.md")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench: wrk is not installed (make bench installs it; or apt-get install wrk)", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    for assignment in args.env:
        name, _, value = assignment.partition("=")
        os.environ[name] = value  # base_env() starts from os.environ
    sizes = QUICK if args.quick else Sizes()
    names = args.scenario or list(DEFAULT)
    if sizes.shared_order is not None:  # one stack: the order that needs the fewest restarts
        names = sorted(names, key=lambda n: sizes.shared_order.index(n) if n in sizes.shared_order else len(names))
    run_started = time.monotonic()
    info = report.meta("quick" if args.quick else "full", worker_pool())
    info["stacks"] = (
        "one stack for every scenario, latency per task (#fake:sleep)"
        if sizes.shared_order is not None
        else "a fresh stack per scenario"
    )
    log(f"{info['mode']} run of {', '.join(names)}; worker-default: {info['worker_pool']}")
    keys = prepare()
    log(f"prepared the database and keys in {time.monotonic() - run_started:.1f} s")
    found_by: dict[str, list[Figure]] = {}
    details: dict[str, Any] = {"sizes": sizes.__repr__()}
    shared = stack.shared() if sizes.shared_order is not None else contextlib.nullcontext()
    with shared:
        for name in names:
            started, aborts = time.monotonic(), len(stack.ABORTS)
            log(f"{name} ...")
            try:
                found, detail = SCENARIOS[name](keys, sizes)
            except Exception as exc:  # one broken scenario must not lose the others' figures
                traceback.print_exc()
                found, detail = (
                    [Figure(name, f"scenario failed: {type(exc).__name__}", float("nan"), "")],
                    {"error": repr(exc)},
                )
            for reason in stack.ABORTS[aborts:]:
                found.append(Figure(name, "stack stopped early by the connection guard", float("nan"), "", note=reason))
            detail["wall_s"] = round(time.monotonic() - started, 1)
            found_by[name] = found
            details[name] = detail
            log(f"{name} took {detail['wall_s']:.1f} s")
            print(report.console(found), flush=True)
    details["wall_s"] = round(time.monotonic() - run_started, 1)
    info["wall_s"] = details["wall_s"]
    info["loadavg_end"] = report.loadavg()
    # The table keeps one order whatever order the scenarios ran in.
    order = [n for n in SCENARIOS if n in found_by]
    figures = [figure for name in order for figure in found_by[name]]
    path = report.write(figures, details, info, update_docs=not args.no_docs and not args.scenario)
    log(f"done in {details['wall_s']:.0f} s")
    print(f"\nbench: wrote {path.relative_to(ROOT)} and {path.with_suffix('.md').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
