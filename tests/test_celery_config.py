"""The Celery application follows the worker policy of SPEC §2: three queues kept apart,
late acks, prefetch 1, nested time limits from settings, recycled children, routes by
task name, and a beat schedule that sweeps every 30 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import schedule
from django.conf import settings

from config.celery import app

ROOT = Path(__file__).resolve().parents[1]


def seconds(every: Any) -> float:
    if isinstance(every, schedule):
        return float(every.seconds)
    if isinstance(every, timedelta):
        return every.total_seconds()
    return float(every)


def test_three_queues_each_with_its_own_exchange_and_routing_key() -> None:
    queues = {queue.name: queue for queue in app.conf.task_queues}
    assert set(queues) == {"priority", "default", "low"}
    # Separate Redis lists: a backlog on low never sits in front of priority work.
    assert len({(q.exchange.name, q.routing_key) for q in queues.values()}) == 3
    assert app.conf.task_default_queue == "default"


def test_worker_policy() -> None:
    conf = app.conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_max_tasks_per_child and conf.worker_max_tasks_per_child > 0
    assert conf.worker_max_memory_per_child and conf.worker_max_memory_per_child > 0
    assert conf.worker_hijack_root_logger is False  # kernel.logging owns logging
    assert conf.task_ignore_result is True


def test_time_limits_come_from_settings_and_nest_below_the_visibility_timeout() -> None:
    conf = app.conf
    assert conf.task_soft_time_limit == settings.TASK_SOFT_TIME_LIMIT
    assert conf.task_time_limit == settings.TASK_TIME_LIMIT
    assert settings.LLM_HTTP_TIMEOUT < conf.task_soft_time_limit < conf.task_time_limit
    visibility = conf.broker_transport_options["visibility_timeout"]
    assert conf.task_time_limit < visibility
    assert settings.TASK_LEASE_SECONDS > 2 * settings.TASK_HEARTBEAT_S


def test_publishing_fails_fast_during_a_broker_outage() -> None:
    options = app.conf.broker_transport_options
    assert app.conf.task_publish_retry is False
    assert options["socket_connect_timeout"] <= 2
    assert app.conf.broker_connection_timeout <= 2


@pytest.mark.parametrize(
    ("task_name", "queue"),
    [
        ("llm.run_ai_task", "default"),
        ("llm.sweep_tasks", "priority"),
        ("llm.deliver_webhook", "priority"),
        ("kernel.relay_outbox", "priority"),
        ("kernel.handle_event", "low"),
        ("kernel.cleanup_outbox", "low"),
        ("kernel.cleanup_idempotency_keys", "low"),
        ("analytics.export_csv", "low"),
        ("billing.anything", "low"),
        ("users.not_routed", "default"),
    ],
)
def test_routes_map_task_names_to_queues(task_name: str, queue: str) -> None:
    assert app.amqp.router.route({}, task_name)["queue"].name == queue


def test_an_explicit_queue_overrides_the_route() -> None:
    """AI tasks choose their queue from the task's priority at dispatch time."""
    assert app.amqp.router.route({"queue": "priority"}, "llm.run_ai_task")["queue"].name == "priority"
    assert app.amqp.router.route({"queue": "low"}, "llm.run_ai_task")["queue"].name == "low"


def test_beat_sweeps_every_30_seconds_and_relays_the_outbox() -> None:
    beat = app.conf.beat_schedule
    sweeper = [entry for entry in beat.values() if entry["task"] == "llm.sweep_tasks"]
    assert len(sweeper) == 1
    assert seconds(sweeper[0]["schedule"]) == 30
    relay = [entry for entry in beat.values() if entry["task"] == "kernel.relay_outbox"]
    assert len(relay) == 1 and seconds(relay[0]["schedule"]) <= 30


def test_every_scheduled_task_is_registered() -> None:
    app.loader.import_default_modules()
    missing = {entry["task"] for entry in app.conf.beat_schedule.values()} - set(app.tasks)
    assert missing == set()


def test_spec_defaults_without_any_configuration() -> None:
    """90 s soft / 120 s hard by default, with the visibility timeout above the hard limit."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", DJANGO_SETTINGS_MODULE="config.settings", DEBUG="true")
    code = (
        "import json\n"
        "from config.celery import app\n"
        "c = app.conf\n"
        "print(json.dumps([c.task_soft_time_limit, c.task_time_limit,"
        " c.broker_transport_options['visibility_timeout'], c.worker_max_tasks_per_child]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    soft, hard, visibility, max_tasks = json.loads(result.stdout.strip().splitlines()[-1])
    assert (soft, hard) == (90, 120)
    assert visibility > hard
    assert max_tasks > 0
