"""``@task`` functions for the tests of kernel.tasks_backend (importable by workers)."""

from __future__ import annotations

import time
from typing import Any

from django.tasks import TaskContext, task

from kernel.tasks_backend import platform_task


@task(priority=80)
def add(a: int, b: int) -> int:
    return a + b


@task(queue_name="low")
def shout(word: str) -> str:
    return word.upper()


@task(takes_context=True)
def flaky(context: TaskContext[Any, Any], word: str) -> dict[str, object]:
    """Fails its first attempt, then succeeds: shows the platform's retries."""
    if context.attempt == 1:
        raise ConnectionError("the first attempt always fails")
    return {"word": word, "attempt": context.attempt}


@platform_task(max_attempts=2)
def always_fails() -> None:
    raise ValueError("never works")


@platform_task(time_limit=0.5, max_attempts=3)
def sleeps(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


@task
def returns_a_set() -> object:
    return {1, 2}
