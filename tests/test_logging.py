"""Request ids and structured logs: an id per request (honoured, echoed, or minted), bound
to every log line with the caller's organization and key, carried into the Celery tasks
the request publishes, and never a secret in a log line.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import structlog
from celery import signals
from django.conf import settings
from django.test import Client
from django.urls import path
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.celery import app as celery_app
from kernel import context
from kernel.logging import configure_logging

HEX_ID = re.compile(r"^[0-9a-f]{32}$")
RAW_SECRET = "sy_abcdef12_0123456789abcdefghijklmnopqrstuvwxyzABCD"


class LoggingProbeApi(APIView):
    """Logs one line (with secrets a careless caller might pass) and publishes one task."""

    def post(self, request: Request) -> Response:
        structlog.get_logger("tests.probe").warning(
            "probe_logged", authorization=f"Bearer {RAW_SECRET}", api_key=RAW_SECRET, detail="kept"
        )
        celery_app.send_task("tests.logging_probe", queue=request.query_params["queue"])
        return Response({"ok": True})


urlpatterns = [path("probe/", LoggingProbeApi.as_view())]


class RecordCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def events(self, name: str) -> list[dict[str, Any]]:
        """Event dicts of structlog lines (``record.msg`` holds the processed event)."""
        return [r.msg for r in self.records if isinstance(r.msg, dict) and r.msg.get("event") == name]


@pytest.fixture
def records() -> Iterator[RecordCapture]:
    handler = RecordCapture()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that configure logging as production does; restores the test setup."""
    try:
        yield
    finally:
        configure_logging(fmt=settings.LOG_FORMAT, level=settings.LOG_LEVEL)
        context.clear()


@pytest.fixture
def probe_queue() -> Iterator[tuple[str, redis.Redis]]:
    """A queue nobody consumes, on the test broker; removed afterwards."""
    name = f"test-logging-{uuid.uuid4().hex[:12]}"
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    try:
        yield name, broker
    finally:
        broker.delete(name, f"_kombu.binding.{name}")
        broker.close()


def published_headers(broker: redis.Redis, queue: str) -> dict[str, Any]:
    raw = broker.lpop(queue)
    assert isinstance(raw, bytes), f"nothing was published to {queue}"
    message = json.loads(raw)
    headers: dict[str, Any] = message["headers"]
    return headers


# -- request ids ------------------------------------------------------------------------


def test_well_formed_request_id_is_honoured_and_echoed(client: Client) -> None:
    response = client.get("/healthz", HTTP_X_REQUEST_ID="edge-7f3a.42:b_c")
    assert response["X-Request-ID"] == "edge-7f3a.42:b_c"


@pytest.mark.parametrize("garbage", ["has spaces", "<script>alert(1)</script>", "x" * 129, "é-unicode", "a\nb"])
def test_garbage_request_id_is_replaced_by_a_fresh_one(client: Client, garbage: str) -> None:
    response = client.get("/healthz", HTTP_X_REQUEST_ID=garbage)
    assert HEX_ID.match(response["X-Request-ID"])
    assert garbage not in response["X-Request-ID"]


def test_every_request_without_an_id_gets_its_own(client: Client) -> None:
    first, second = client.get("/healthz")["X-Request-ID"], client.get("/healthz")["X-Request-ID"]
    assert HEX_ID.match(first) and HEX_ID.match(second)
    assert first != second


# -- log lines inside a request ---------------------------------------------------------


@pytest.mark.urls(__name__)
def test_log_line_in_a_request_carries_ids_and_no_secret(
    tenant, records: RecordCapture, probe_queue: tuple[str, redis.Redis]
) -> None:
    queue, _ = probe_queue
    response = tenant.client.post(f"/probe/?queue={queue}", {}, format="json", HTTP_X_REQUEST_ID="req-logging-1")
    assert response.status_code == 200
    (event,) = records.events("probe_logged")
    assert event["request_id"] == "req-logging-1"
    assert event["organization_id"] == tenant.organization_id
    assert event["api_key_id"] == tenant.api_key_id
    assert event["method"] == "POST" and event["path"] == "/probe/"
    assert event["authorization"] == event["api_key"] == "[redacted]"
    assert event["detail"] == "kept"
    assert RAW_SECRET not in repr(records.records)
    assert tenant.issued.key not in repr(event)


@pytest.mark.urls(__name__)
def test_task_published_in_a_request_carries_its_request_id(tenant, probe_queue: tuple[str, redis.Redis]) -> None:
    queue, broker = probe_queue
    response = tenant.client.post(f"/probe/?queue={queue}", {}, format="json")
    headers = published_headers(broker, queue)
    assert headers["request_id"] == response["X-Request-ID"]
    assert headers["task"] == "tests.logging_probe"


def test_publishing_outside_a_request_adds_no_request_id(probe_queue: tuple[str, redis.Redis]) -> None:
    queue, broker = probe_queue
    context.clear()
    celery_app.send_task("tests.logging_probe", queue=queue)
    assert "request_id" not in published_headers(broker, queue)


def test_an_explicit_request_id_header_is_not_overwritten(probe_queue: tuple[str, redis.Redis]) -> None:
    queue, broker = probe_queue
    context.bind(request_id="from-the-request")
    try:
        celery_app.send_task("tests.logging_probe", queue=queue, headers={"request_id": "chosen-by-caller"})
    finally:
        context.clear()
    assert published_headers(broker, queue)["request_id"] == "chosen-by-caller"


# -- the worker side --------------------------------------------------------------------


class FakeTask:
    """What the signal handlers read from a Celery task: its name and its request."""

    name = "llm.run_ai_task"

    def __init__(self, **request: Any) -> None:
        self.request = SimpleNamespace(**request)


def test_task_prerun_binds_task_and_request_ids_and_postrun_clears_them() -> None:
    context.bind(request_id="stale-from-a-previous-task", organization_id="stale")
    task = FakeTask(request_id="req-from-header")
    signals.task_prerun.send(sender=task, task_id="task-1", task=task, args=(), kwargs={})
    bound = structlog.contextvars.get_contextvars()
    assert bound == {"task_id": "task-1", "task_name": "llm.run_ai_task", "request_id": "req-from-header"}
    signals.task_postrun.send(sender=task, task_id="task-1", task=task, args=(), kwargs={}, retval=None, state="OK")
    assert structlog.contextvars.get_contextvars() == {}


def test_task_without_a_request_id_gets_a_fresh_one() -> None:
    task = FakeTask()
    signals.task_prerun.send(sender=task, task_id="task-2", task=task, args=(), kwargs={})
    try:
        assert HEX_ID.match(str(context.current_request_id()))
    finally:
        context.clear()


# -- rendering --------------------------------------------------------------------------


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_context_for_structlog_and_stdlib_and_redact_secrets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Configured here, not in a fixture: the handler binds the stderr of this test phase.
    configure_logging(fmt="json", level="INFO")
    context.bind(request_id="req-json-1", organization_id="org-1", api_key_id="key-1")
    structlog.get_logger("tests.render").warning(
        "structlog_line",
        api_key=RAW_SECRET,
        headers={"Authorization": f"Bearer {RAW_SECRET}", "X-Api-Key": RAW_SECRET, "Accept": "application/json"},
    )
    logging.getLogger("some.library").warning("stdlib line %s", "formatted")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    by_event = {line["event"]: line for line in lines}
    own, foreign = by_event["structlog_line"], by_event["stdlib line formatted"]
    for line in (own, foreign):
        assert (line["request_id"], line["organization_id"], line["api_key_id"]) == ("req-json-1", "org-1", "key-1")
        assert line["level"] == "warning"
        assert line["timestamp"].endswith("Z")
    assert own["api_key"] == "[redacted]"
    assert own["headers"] == {"Authorization": "[redacted]", "X-Api-Key": "[redacted]", "Accept": "application/json"}
    assert foreign["logger"] == "some.library"
    assert RAW_SECRET not in json.dumps(lines)
