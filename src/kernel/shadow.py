"""Shadow reads: try a new query path beside the old one before switching to it.

``ShadowRead("llm.task_page", key=...)`` wraps a read: every call runs and **serves the
old path**; a sampled share of calls (``SHADOW_READ_RATE``, 0..1; per read with
``rate=``) also runs the new path, compares the two through ``key`` (a JSON-like view:
ids, counts, cursors; never the content) and

- counts every comparison in ``switchyard_shadow_reads_total{read, outcome}``
  (``match``, ``mismatch``, ``error``: the new path raised);
- logs ``shadow_read_mismatch`` (warning) with a short description of the difference,
  and ``shadow_read_failed`` with the exception of the new path.

The new path can never change what the caller gets or raise into it. Its queries run on
the same connection, after the old path (sampled calls take longer; keep the rate low),
and are not counted against the request's query budget. When the mismatch counter stays
at zero over enough traffic, switch to the new path and delete the old one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from django.conf import settings
from prometheus_client import Counter

from kernel.middleware import queries_uncounted

log = structlog.get_logger(__name__)

SHADOW_READS = Counter(
    "switchyard_shadow_reads_total", "Shadow read comparisons of a new query path", ["read", "outcome"]
)
_sampler = random.Random()  # sampling, not security


def _identity(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class ShadowRead[T]:
    name: str
    key: Callable[[T], Any] = field(default=_identity)
    rate: float | None = None  # None: settings.SHADOW_READ_RATE

    def sampled(self) -> bool:
        rate = settings.SHADOW_READ_RATE if self.rate is None else self.rate
        return rate > 0 and _sampler.random() < rate

    def run(self, old: Callable[[], T], new: Callable[[], T]) -> T:
        result = old()
        if not self.sampled():
            return result
        try:
            with queries_uncounted():
                candidate = new()
            expected, got = self.key(result), self.key(candidate)
        except Exception as exc:
            SHADOW_READS.labels(read=self.name, outcome="error").inc()
            log.warning("shadow_read_failed", read=self.name, error=f"{type(exc).__name__}: {exc}"[:300])
            return result
        if expected == got:
            SHADOW_READS.labels(read=self.name, outcome="match").inc()
        else:
            SHADOW_READS.labels(read=self.name, outcome="mismatch").inc()
            log.warning("shadow_read_mismatch", read=self.name, difference=describe(expected, got))
        return result


def describe(old: Any, new: Any, *, limit: int = 500) -> str:
    """Where two keys differ, briefly: the first differing field or position."""
    text = _describe(old, new, "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(old: Any, new: Any, path: str) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new), key=str):
            if old.get(name) != new.get(name):
                return _describe(old.get(name), new.get(name), f"{path}.{name}" if path else str(name))
    if isinstance(old, list | tuple) and isinstance(new, list | tuple):
        for index, (a, b) in enumerate(zip(old, new, strict=False)):
            if a != b:
                return _describe(a, b, f"{path}[{index}]") + f" (lengths {len(old)} / {len(new)})"
        if len(old) != len(new):
            return f"{path or 'value'}: lengths {len(old)} / {len(new)}"
    return f"{path or 'value'}: old {old!r}, new {new!r}"
