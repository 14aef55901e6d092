"""A stand-in for Celery's soft time limit: an exception raised from a signal handler."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class SoftTimeLimit(Exception):
    """Raised by the SIGALRM handler, as Celery's handler raises SoftTimeLimitExceeded."""


@contextmanager
def soft_time_limit(seconds: float) -> Iterator[None]:
    """Raise ``SoftTimeLimit`` in the main thread after ``seconds``, wherever it is."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SoftTimeLimit

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
