"""Submit one task through the API in this process, then die with ``os._exit`` at a
chosen point: a crash, not an exception (no ``finally``, no rollback handler; the
database connection just drops, as when the OOM killer or SIGKILL takes a web worker).

    python -m tests.kernel.crash_submit after-task|after-commit API_KEY IDEMPOTENCY_KEY PROMPT

``after-task``: right after ``task_submit`` returned, before the view stored its answer.
``after-commit``: right after ``idempotent_execute`` returned, before the response is written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import django

CRASHED = 86


def die_after[**P, R](function: Callable[P, R]) -> Callable[P, R]:
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        function(*args, **kwargs)
        os._exit(CRASHED)

    return wrapper


def main() -> None:
    point, api_key, idempotency_key, prompt = sys.argv[1:5]
    django.setup()
    from rest_framework.test import APIClient

    from kernel import services as kernel
    from llm import services as llm

    target: Any = llm if point == "after-task" else kernel
    name = "task_submit" if point == "after-task" else "idempotent_execute"
    setattr(target, name, die_after(getattr(target, name)))
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_key}")
    response = client.post("/api/v1/ai-tasks/", {"prompt": prompt}, format="json", HTTP_IDEMPOTENCY_KEY=idempotency_key)
    sys.exit(f"did not crash: {response.status_code} {response.content!r}")


if __name__ == "__main__":
    main()
