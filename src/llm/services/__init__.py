"""Public surface of the llm context. Other contexts, the API, the admin and the Celery
tasks call only what is exported here. One module per use-case (docs/decisions/llm-layout.md):

- ``submit``: accepting a task (cache hit, budgets, insert, dispatch after commit);
- ``tasks``: reading tasks and cancelling one; ``mapping``: row → contract;
- ``replay``: staff re-runs and dead-letter replays;
- ``dispatch``: the fair gate between PostgreSQL and the broker, and ``send``;
- ``execution`` (one attempt on a worker), ``fallback`` (which model next),
  ``runtime`` (the worker's keeper thread), ``sweeper`` (repairs);
- ``terminal``: what every path into a terminal state announces; ``webhooks``: delivery;
- ``queues``: depths and ages for the dashboard and ``/metrics``.

Results are ``contracts.llm`` types. The SSE transport is ``llm.streams``.
"""

from contracts.llm import ExecutionOutcome, FillReport, QueueStats, SweepReport, WebhookOutcome
from llm.providers.tokens import estimate_tokens
from llm.services import dispatch
from llm.services.callbacks import callback_url_problem
from llm.services.dispatch import dispatch_fill
from llm.services.execution import backoff_seconds, task_execute
from llm.services.queues import queue_depths, queue_gauges, queue_stats
from llm.services.replay import TaskNotRerunnable, dead_letter_replay, task_rerun
from llm.services.runtime import runtime
from llm.services.submit import task_submit
from llm.services.sweeper import tasks_sweep
from llm.services.tasks import TaskNotCancellable, TaskNotFound, task_cancel, task_get, task_list, tasks_get_many
from llm.services.webhooks import webhook_deliver, webhook_secret, webhook_secrets, webhook_signature
from llm.streams import status_payload


def worker_serve(*, queues: list[str], slots: int, node: str) -> None:
    """This process consumes ``queues`` with ``slots`` concurrent calls (worker start)."""
    runtime().serve_pool(queues=queues, slots=slots, node=node)


def worker_leave() -> None:
    runtime().leave_pool()


__all__ = [
    "ExecutionOutcome",
    "FillReport",
    "QueueStats",
    "SweepReport",
    "TaskNotCancellable",
    "TaskNotFound",
    "TaskNotRerunnable",
    "WebhookOutcome",
    "backoff_seconds",
    "callback_url_problem",
    "dead_letter_replay",
    "dispatch",
    "dispatch_fill",
    "estimate_tokens",
    "queue_depths",
    "queue_gauges",
    "queue_stats",
    "status_payload",
    "task_cancel",
    "task_execute",
    "task_get",
    "task_list",
    "task_rerun",
    "task_submit",
    "tasks_get_many",
    "tasks_sweep",
    "webhook_deliver",
    "webhook_secret",
    "webhook_secrets",
    "webhook_signature",
    "worker_leave",
    "worker_serve",
]
