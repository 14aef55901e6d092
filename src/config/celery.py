"""The Celery application: three queues, routing by task name, the beat schedule.

Worker policy (acks_late, prefetch 1, time limits, ...) lives in settings under the
CELERY_ namespace; this module only wires queues, routes and the schedule.
"""

from __future__ import annotations

import os

from celery import Celery
from django.conf import settings  # lazy: read at first use, after the line below
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("switchyard")
app.config_from_object("django.conf:settings", namespace="CELERY")

QUEUES = ("priority", "default", "low")
app.conf.task_queues = [Queue(name, Exchange(name), routing_key=name) for name in QUEUES]
app.conf.update(task_default_queue="default", task_default_exchange="default", task_default_routing_key="default")

# Routing by task name. AI tasks pick their queue from the task's priority at dispatch
# time (llm.services), which overrides the route below.
app.conf.task_routes = {
    "llm.run_ai_task": {"queue": "default"},
    "llm.sweep_tasks": {"queue": "priority"},
    "llm.deliver_webhook": {"queue": "priority"},
    "kernel.relay_outbox": {"queue": "priority"},
    "kernel.handle_event": {"queue": "low"},
    "kernel.handle_events": {"queue": "low"},
    "analytics.*": {"queue": "low"},
    "billing.*": {"queue": "low"},
    "kernel.cleanup_*": {"queue": "low"},
    "kernel.sweep_django_tasks": {"queue": "priority"},
    # kernel.run_django_task: the queue is chosen per task at send time (kernel.tasks_backend).
}

# The schedule lives in code so it is reviewed like code (SPEC §2, beat).
app.conf.beat_schedule = {
    "sweep-ai-tasks": {"task": "llm.sweep_tasks", "schedule": settings.SWEEPER_INTERVAL_S},
    "relay-outbox": {"task": "kernel.relay_outbox", "schedule": 5.0},
    "cleanup-idempotency-keys": {"task": "kernel.cleanup_idempotency_keys", "schedule": 3600.0},
    "cleanup-outbox": {"task": "kernel.cleanup_outbox", "schedule": 3600.0},
    # Analytics: the next months' partitions exist before their events, old ones go.
    "analytics-maintain-partitions": {"task": "analytics.maintain_partitions", "schedule": 3600.0},
    "analytics-cleanup-exports": {"task": "analytics.cleanup_exports", "schedule": 600.0},
    "sweep-django-tasks": {"task": "kernel.sweep_django_tasks", "schedule": 30.0},
    "cleanup-django-tasks": {"task": "kernel.cleanup_django_tasks", "schedule": 3600.0},
}

app.autodiscover_tasks()

from kernel import celery_signals  # noqa: E402,F401  (binds log context in workers)
