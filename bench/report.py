"""Figures with their targets, the JSON result file and the markdown table."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
# The full run's table goes under "Latest run", the quick run's under "Quick run".
MARKERS = {
    "full": ("<!-- bench:table:begin -->", "<!-- bench:table:end -->"),
    "quick": ("<!-- bench:quick:begin -->", "<!-- bench:quick:end -->"),
}


@dataclass(frozen=True, slots=True)
class Figure:
    scenario: str
    name: str
    value: float
    unit: str
    target: float | None = None
    better: Literal["lower", "higher"] = "lower"
    note: str = ""

    @property
    def met(self) -> bool | None:
        if self.target is None or math.isnan(self.value):
            return None
        return self.value <= self.target if self.better == "lower" else self.value >= self.target

    def verdict(self) -> str:
        if self.target is None:
            return ""
        if math.isnan(self.value):
            return "not measured"
        if self.met:
            return "met"
        miss = self.value - self.target if self.better == "lower" else self.target - self.value
        ratio = self.value / self.target if self.better == "lower" else self.target / max(self.value, 1e-9)
        return f"missed by {_num(miss)} {self.unit} ({ratio:.1f}x)".replace("  ", " ")

    def target_text(self) -> str:
        if self.target is None:
            return ""
        return f"{'≤' if self.better == 'lower' else '≥'} {_num(self.target)} {self.unit}".strip()


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"


def git_revision() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    return (result.stdout.strip() or "unknown") + ("+changes" if status.stdout.strip() else "")


def console(figures: list[Figure]) -> str:
    lines = []
    for f in figures:
        value = f"{_num(f.value)} {f.unit}".strip()
        target = f"target {f.target_text()}: {f.verdict()}" if f.target is not None else ""
        lines.append(f"  {f.scenario:10} {f.name:52} {value:>16}  {target}".rstrip())
        if f.note:
            lines.append(f"  {'':10}   ({f.note})")
    return "\n".join(lines)


def markdown(figures: list[Figure], meta: dict[str, Any]) -> str:
    extra = "".join(f" · {meta[k]}" for k in ("stacks",) if meta.get(k))
    extra += f" · wall {meta['wall_s']:.0f} s" if meta.get("wall_s") else ""
    extra += f" · load average at end {meta['loadavg_end']}" if meta.get("loadavg_end") else ""
    head = (
        f"Run {meta['date']} · `{meta['mode']}` · git {meta['git']} · {meta['cpus']} CPUs · "
        f"load average at start {meta['loadavg']} · worker pool: {meta['worker_pool']}{extra}\n\n"
    )
    rows = ["| scenario | figure | value | target | verdict | note |", "|---|---|---|---|---|---|"]
    for f in figures:
        verdict = f.verdict()
        verdict = f"**{verdict}**" if verdict.startswith("missed") else verdict
        rows.append(
            f"| {f.scenario} | {f.name} | {_num(f.value)} {f.unit} | {f.target_text()} | {verdict} | {f.note} |"
        )
    return head + "\n".join(rows) + "\n"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def meta(mode: str, worker_pool: str) -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": mode,
        "git": git_revision(),
        "cpus": len(os.sched_getaffinity(0)),
        "loadavg": loadavg(),
        "python": platform.python_version(),
        "worker_pool": worker_pool,
    }


def write(figures: list[Figure], details: dict[str, Any], info: dict[str, Any], *, update_docs: bool) -> Path:
    """bench/results/<date>.json and .md; the table between the markers of docs/benchmarks.md."""
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffix = "-quick" if info["mode"] == "quick" else ""
    path = RESULTS / f"{stamp}{suffix}.json"
    payload = {
        "meta": info,
        "figures": [{**asdict(f), "target_text": f.target_text(), "verdict": f.verdict()} for f in figures],
        "details": details,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    table = markdown(figures, info)
    path.with_suffix(".md").write_text(table)
    if update_docs and DOCS.exists() and info["mode"] in MARKERS:
        begin, end = MARKERS[info["mode"]]
        text = DOCS.read_text()
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
        if pattern.search(text):
            source = f"From `bench/results/{path.name}`.\n\n"
            DOCS.write_text(pattern.sub(lambda _: f"{begin}\n{source}{table}{end}", text))
    return path
