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


def test_the_app_carries_the_worker_policy() -> None:
    """What every worker process inherits (the running worker's view is checked below)."""
    conf = app.conf
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_max_tasks_per_child and conf.worker_max_tasks_per_child > 0
    assert conf.worker_max_memory_per_child and conf.worker_max_memory_per_child > 0
    assert conf.worker_hijack_root_logger is False  # kernel.logging owns logging
    assert conf.task_ignore_result is True


def test_time_limits_nest_below_the_visibility_timeout() -> None:
    conf = app.conf
    assert settings.LLM_HTTP_TIMEOUT < conf.task_soft_time_limit < conf.task_time_limit
    assert conf.task_time_limit < conf.broker_transport_options["visibility_timeout"]
    assert settings.TASK_LEASE_SECONDS > 2 * settings.TASK_HEARTBEAT_S


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_worker_started_by_bin_switchyard_runs_with_the_policy(tenant, tmp_path: Path) -> None:
    """A real worker, started by bin/switchyard with its default concurrency, answers
    ``inspect stats``/``conf`` with a threads pool of 300, prefetch 1 per slot, late acks
    and the time limits of its environment; and acks late in fact: while a task runs its
    message is still unacknowledged in the broker, and acknowledged once it ends."""
    import redis

    from llm.models import AITask
    from tests.pipeline.conftest import Worker, wait_for

    worker = Worker("default", tmp_path, WORKER_CONCURRENCY="")  # empty: bin/switchyard's default
    try:
        worker.wait_ready()
        inspect = app.control.inspect(destination=[worker.name], timeout=5)
        [stats] = (inspect.stats() or {}).values()
        [conf] = (inspect.conf() or {}).values()
        assert stats["pool"]["implementation"] == "celery.concurrency.thread:TaskPool"
        assert stats["pool"]["max-concurrency"] == 300
        assert stats["prefetch_count"] == 300  # worker_prefetch_multiplier 1 x 300 slots
        # The Django settings namespace (CELERY_*), as the worker process resolved it.
        assert conf["CELERY_WORKER_PREFETCH_MULTIPLIER"] == 1
        assert conf["CELERY_TASK_ACKS_LATE"] is True and conf["CELERY_TASK_REJECT_ON_WORKER_LOST"] is True
        # The test environment's limits (settings_test); the defaults are checked below.
        assert (conf["CELERY_TASK_SOFT_TIME_LIMIT"], conf["CELERY_TASK_TIME_LIMIT"]) == (4, 6)

        broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": "Slow #fake:sleep=2000"}, format="json")
        task_id = response.json()["id"]

        def unacked() -> bool:
            return any(task_id.encode() in raw for raw in broker.hvals("unacked"))

        wait_for(lambda: AITask.objects.filter(id=task_id, status="processing").exists(), timeout=20)
        assert unacked()  # acks_late: a worker lost now leaves the message to be redelivered
        wait_for(lambda: AITask.objects.filter(id=task_id, status="done").exists(), timeout=20)
        wait_for(lambda: not unacked(), timeout=5)
    finally:
        worker.stop()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_outbox_relay_is_acked_on_receipt(tmp_path: Path) -> None:
    """Unlike every other task: while the relay waits (its gather window, 2 s here) its
    message is already acked, so a broker connection lost meanwhile leaves kombu nothing
    to restore (kombu 5.7 crashes the worker there, kernel.tasks)."""
    import redis

    from tests.pipeline.conftest import Worker, wait_for

    worker = Worker("priority", tmp_path, OUTBOX_RELAY_GATHER_S="2")
    try:
        worker.wait_ready()
        broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        message_id = app.send_task("kernel.relay_outbox", queue="priority").id

        def logged(what: str) -> bool:
            return f"kernel.relay_outbox[{message_id}] {what}" in worker.log_path.read_text()

        wait_for(lambda: logged("received"), timeout=10)
        assert not any(message_id.encode() in raw for raw in broker.hvals("unacked"))
        assert not logged("succeeded")  # still in its gather window
        wait_for(lambda: logged("succeeded"), timeout=10)
    finally:
        worker.stop()


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
        ("kernel.handle_events", "low"),
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


def celery_conf(env: dict[str, str], expression: str) -> Any:
    """``expression`` over ``app.conf`` (as ``c``) as a fresh process configures Celery."""
    code = f"import json\nfrom config.celery import app\nc = app.conf\nprint(json.dumps({expression}))\n"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def bare_env(**values: str) -> dict[str, str]:
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    env.update(PYTHONPATH=f"{ROOT / 'src'}:{ROOT}", DJANGO_SETTINGS_MODULE="config.settings", DEBUG="true")
    env.update(values)
    return env


def test_spec_defaults_without_any_configuration() -> None:
    """90 s soft / 120 s hard by default, with the visibility timeout above the hard limit."""
    soft, hard, visibility, max_tasks = celery_conf(
        bare_env(),
        "[c.task_soft_time_limit, c.task_time_limit, c.broker_transport_options['visibility_timeout'],"
        " c.worker_max_tasks_per_child]",
    )
    assert (soft, hard) == (90, 120)
    assert visibility > hard
    assert max_tasks > 0


def test_celery_task_events_are_off_by_default_and_can_be_turned_on() -> None:
    """Task events feed only Flower and cost a broker publish per task and state (and one
    more per submit): off unless CELERY_TASK_EVENTS says otherwise."""
    events = "[c.worker_send_task_events, c.task_send_sent_event]"
    assert celery_conf(bare_env(), events) == [False, False]
    assert celery_conf(bare_env(CELERY_TASK_EVENTS="true"), events) == [True, True]
