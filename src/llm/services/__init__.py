"""Public surface of the llm context. Other contexts, the API, the admin and the Celery
tasks call only what is exported here."""

from llm.providers.tokens import estimate_tokens
from llm.services import dispatch
from llm.services._common import status_payload
from llm.services.callbacks import callback_url_problem
from llm.services.dispatch import FillReport, dispatch_fill
from llm.services.execution import Outcome, backoff_seconds, task_execute
from llm.services.lookups import tasks_get_many
from llm.services.queues import queue_depths
from llm.services.runtime import runtime
from llm.services.stats import QueueStats, queue_gauges, queue_stats
from llm.services.submit import (
    TaskNotCancellable,
    TaskNotFound,
    TaskNotRerunnable,
    dead_letter_replay,
    task_cancel,
    task_get,
    task_list,
    task_rerun,
    task_submit,
)
from llm.services.sweeper import SweepReport, tasks_sweep
from llm.services.webhooks import (
    WebhookOutcome,
    webhook_deliver,
    webhook_secret,
    webhook_secrets,
    webhook_signature,
)


def worker_serve(*, queues: list[str], slots: int, node: str) -> None:
    """This process consumes ``queues`` with ``slots`` concurrent calls (worker start)."""
    runtime().serve_pool(queues=queues, slots=slots, node=node)


def worker_leave() -> None:
    runtime().leave_pool()


__all__ = [
    "FillReport",
    "Outcome",
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
