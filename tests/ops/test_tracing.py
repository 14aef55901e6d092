"""Traces (kernel.tracing, llm.telemetry): one trace from the 202 through the queue wait,
the provider call and the SSE publish, with the GenAI attributes on the provider span.

In this process, with an in-memory exporter: the request through the Django test client,
then the very message it sent, taken from the broker and run by Celery's worker request
(the code a worker runs for it). Across processes: gunicorn (``bin/switchyard web``) and a
worker (``bin/switchyard worker-default``) exporting by OTLP/HTTP to a collector this test
serves, as a deployment's would. And off: a process without an endpoint loads nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from asgiref.sync import async_to_sync
from celery import current_app
from celery.worker.request import Request
from django.conf import settings
from django.db import connections
from django.test import AsyncClient
from django.utils.module_loading import import_string
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import llm.tasks  # noqa: F401  (registers llm.run_ai_task, which run_next_message runs)
from kernel import tracing
from kernel.logging import _trace_ids
from llm import services
from llm.models import AITask
from llm.services.dispatch import pool_register, pool_slots
from tests.conftest import Broker, Tenant
from tests.pipeline.conftest import Worker, wait_for
from tests.support import ROOT, server_env

PROMPT = "Tell me about signal boxes. #fake:tokens=17,9"
KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class Span:
    """One span as either exporter hands it over (ids as hex, the kind as a word)."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str | None
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status: str  # "unset", "ok" or "error"


def from_sdk(span: ReadableSpan) -> Span:
    assert span.context is not None
    return Span(
        name=span.name,
        kind=span.kind.name.lower(),
        trace_id=f"{span.context.trace_id:032x}",
        span_id=f"{span.context.span_id:016x}",
        parent_id=f"{span.parent.span_id:016x}" if span.parent else None,
        attributes=dict(span.attributes or {}),
        resource=dict(span.resource.attributes),
        status=span.status.status_code.name.lower(),
    )


def _value(any_value: Any) -> Any:
    field = any_value.WhichOneof("value")
    if field == "array_value":
        return tuple(_value(v) for v in any_value.array_value.values)
    return getattr(any_value, field) if field else None


class Collector:
    """An OTLP/HTTP trace receiver (protobuf, as the exporter sends it) on a free port."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ok = self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf"
                if ok:
                    request = ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    with lock:
                        collector.requests += 1
                        collector.spans.extend(collector.decode(request))
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def decode(request: ExportTraceServiceRequest) -> Iterator[Span]:
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    yield Span(
                        name=span.name,
                        kind=KINDS[span.kind],
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex() or None,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        resource=resource,
                        status={0: "unset", 1: "ok", 2: "error"}[span.status.code],
                    )


@pytest.fixture
def collector() -> Iterator[Collector]:
    found = Collector()
    yield found
    found.server.shutdown()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, span by span into memory."""
    spans = InMemorySpanExporter()
    tracing.install(spans, role="test")
    connections.close_all()  # a connection opened before the psycopg instrumentation is not traced
    yield spans
    tracing.uninstall()
    connections.close_all()


def one(spans: list[Span], name: str, **attributes: Any) -> Span:
    found = [s for s in spans if s.name == name and all(s.attributes.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, (name, attributes, sorted(s.name for s in spans))
    return found[0]


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id]


def assert_task_trace(spans: list[Span], task: AITask) -> dict[str, Span]:
    """The trace of a task submitted and run once: its tree and the attributes that matter."""
    server = one(spans, "POST api/v1/ai-tasks/")
    assert server.kind == "server" and server.parent_id is None
    assert server.attributes["http.status_code"] == 202
    trace = [s for s in spans if s.trace_id == server.trace_id]

    publish = one(trace, "apply_async/llm.run_ai_task")
    assert publish.kind == "producer" and publish.parent_id == server.span_id  # sent inside the request
    assert publish.attributes["messaging.message.id"] == str(task.id)
    run = one(trace, "run/llm.run_ai_task")
    assert run.kind == "consumer" and run.parent_id == publish.span_id  # the message carried the context
    assert run.attributes["switchyard.task_id"] == str(task.id)
    assert run.attributes["switchyard.organization_id"] == str(task.organization_id)
    assert run.attributes["switchyard.outcome"] == "done"
    assert run.attributes["switchyard.request_id"] == server.attributes["switchyard.request_id"]
    assert run.attributes["switchyard.queue_wait_ms"] >= 0

    wait = one(trace, "switchyard.queue_wait")
    assert wait.parent_id == publish.span_id  # publish → wait → run
    assert wait.attributes["switchyard.task_id"] == str(task.id)
    assert wait.attributes["messaging.destination.name"] == "default"

    provider = one(trace, f"chat {task.served_model}")
    assert provider.kind == "client" and provider.parent_id == run.span_id
    assert provider.status != "error"
    assert provider.attributes["gen_ai.operation.name"] == "chat"
    assert provider.attributes["gen_ai.provider.name"] == "fake"
    assert provider.attributes["gen_ai.request.model"] == task.model
    assert provider.attributes["gen_ai.response.model"] == task.served_model
    assert provider.attributes["gen_ai.usage.input_tokens"] == task.input_tokens == 17
    assert provider.attributes["gen_ai.usage.output_tokens"] == task.output_tokens == 9
    assert provider.attributes["switchyard.organization_id"] == str(task.organization_id)
    assert provider.attributes["switchyard.task_id"] == str(task.id)
    assert task.cost_usd > 0
    assert provider.attributes["switchyard.cost_usd"] == pytest.approx(float(task.cost_usd), rel=1e-9)
    # The answer's chunks are counted, not a span (and a Redis command) each.
    assert provider.attributes["switchyard.stream.deltas"] > 0
    assert children(trace, provider) == []

    # The SSE events the worker appended: the attempt, then the statuses up to done.
    published = [s for s in trace if s.name == "publish task-events"]
    assert {s.parent_id for s in published} == {run.span_id}
    events = [s.attributes["switchyard.sse.event"] for s in published]
    assert events.count("attempt") == 1 and events.count("status") >= 2
    assert all(s.kind == "producer" and s.attributes["switchyard.task_id"] == str(task.id) for s in published)
    for event in published:  # the Redis instrumentation's span of the XADD, inside it
        assert [c.attributes.get("db.system") for c in children(trace, event)] == ["redis"]

    # The kept instrumentations inside: the request's writes (one query string with the
    # task's INSERT: kernel.writes), the worker's claim.
    queries = [s for s in trace if s.attributes.get("db.system") == "postgresql"]
    statements = [(s.parent_id, str(s.attributes.get("db.statement"))) for s in queries]
    assert any(p == server.span_id and 'INSERT INTO "llm_aitask"' in q for p, q in statements)
    assert any(p == run.span_id and q.lstrip().startswith("UPDATE llm_aitask") for p, q in statements)
    return {"server": server, "publish": publish, "run": run, "provider": provider}


def submit(client: Any) -> str:
    response = client.post("/api/v1/ai-tasks/", {"prompt": PROMPT, "cache": False}, format="json")
    assert response.status_code == 202, response.content
    return str(response.json()["id"])


def run_next_message(queue: str, task_id: str) -> dict[str, Any]:
    """Take the next message of ``queue`` (``task_id``'s) from the broker and run it as a
    worker does (celery.worker.request.Request: its headers become the task's request).
    Returns the message's headers."""
    with current_app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        message = channel.basic_get(queue, no_ack=True)
        assert message is not None, f"no message in {queue}"
        task = current_app.tasks[message.headers["task"]]
        assert message.headers["id"] == task_id
        Request(message, app=current_app, task=task, hostname="tracing-test@localhost").execute()
    return dict(message.headers)


@pytest.mark.django_db(transaction=True)
def test_one_trace_from_the_202_through_the_provider_call_to_the_stream_publish(
    exporter: InMemorySpanExporter, tenant: Tenant, broker: Broker
) -> None:
    pool_register(queue="default", node="tracing-test", slots=4, ttl_s=60)  # room: sent at submit
    task_id = submit(tenant.client)
    headers = run_next_message("default", task_id)

    task = AITask.objects.get(id=task_id)
    assert task.status == AITask.Status.DONE
    spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    tree = assert_task_trace(spans, task)
    # W3C trace context in the message: the producer span's id travels to the worker.
    _version, trace_id, parent_id, _flags = headers["traceparent"].split("-")
    assert (trace_id, parent_id) == (tree["publish"].trace_id, tree["publish"].span_id)
    assert tree["server"].resource["switchyard.role"] == "test"


@pytest.mark.django_db(transaction=True)
def test_a_task_held_at_the_gate_is_sent_later_in_the_trace_of_its_202(
    exporter: InMemorySpanExporter, tenant: Tenant, broker: Broker
) -> None:
    task_id = submit(tenant.client)  # no worker consumes the queue: the gate holds it
    assert broker.task_ids("default") == [] and AITask.objects.get(id=task_id).dispatched_at is None
    pool_register(queue="default", node="tracing-test", slots=4, ttl_s=60)
    assert services.dispatch_fill("default").sent == 1  # as a worker's keeper thread: no trace around it
    run_next_message("default", task_id)

    task = AITask.objects.get(id=task_id)
    assert task.status == AITask.Status.DONE
    spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    assert_task_trace(spans, task)  # the send's producer span is a child of the 202's server span


@pytest.mark.django_db(transaction=True)
def test_every_attempt_of_a_task_is_in_the_trace_of_its_202(
    exporter: InMemorySpanExporter, tenant: Tenant, broker: Broker
) -> None:
    pool_register(queue="default", node="tracing-test", slots=4, ttl_s=60)
    response = tenant.client.post(
        "/api/v1/ai-tasks/", {"prompt": "Fail once. #fake:error=503:1", "cache": False}, format="json"
    )
    task_id = response.json()["id"]
    run_next_message("default", task_id)  # attempt 1 fails: back to the gate with a due time
    wait_for(lambda: services.dispatch_fill("default").sent, timeout=10)  # sent once it is due
    run_next_message("default", task_id)

    assert AITask.objects.get(id=task_id).status == AITask.Status.DONE
    spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    server = one(spans, "POST api/v1/ai-tasks/")
    runs = [s for s in spans if s.name == "run/llm.run_ai_task"]
    assert [r.attributes["switchyard.outcome"] for r in runs] == ["retry", "done"]
    assert {r.trace_id for r in runs} == {server.trace_id}
    sends = [s for s in spans if s.name == "apply_async/llm.run_ai_task"]
    assert [s.parent_id for s in sends] == [server.span_id, server.span_id]
    assert [r.parent_id for r in runs] == [s.span_id for s in sends]


@pytest.mark.django_db(transaction=True)
def test_the_stream_role_traces_requests_without_a_sync_middleware(
    exporter: InMemorySpanExporter, tenant: Tenant, broker: Broker
) -> None:
    """Under ASGI the server span comes from an async-capable middleware: the instrumentation's
    own is sync-only, and one sync-only middleware runs every SSE stream in a thread."""
    sync_only = [p for p in settings.MIDDLEWARE if not getattr(import_string(p), "async_capable", False)]
    assert tracing.MIDDLEWARE in settings.MIDDLEWARE and sync_only == []
    pool_register(queue="default", node="tracing-test", slots=4, ttl_s=60)
    task_id = submit(tenant.client)
    run_next_message("default", task_id)
    exporter.clear()

    response = async_to_sync(AsyncClient().get)(
        f"/api/v1/ai-tasks/{task_id}/events/", headers={"Authorization": f"Bearer {tenant.issued.key}"}
    )
    assert response.status_code == 200
    spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    server = one(spans, "GET api/v1/ai-tasks/<uuid:task_id>/events/")
    assert server.kind == "server" and server.parent_id is None
    assert server.attributes["http.status_code"] == 200
    # The view's awaited Redis reads (redis.asyncio) and its snapshot query are inside it.
    inside = {s.attributes.get("db.system") for s in spans if s.trace_id == server.trace_id and s != server}
    assert inside == {"redis", "postgresql"}


@pytest.mark.django_db(transaction=True)
def test_a_failed_provider_call_is_an_error_span_with_its_error_type(
    exporter: InMemorySpanExporter, tenant: Tenant, broker: Broker
) -> None:
    pool_register(queue="default", node="tracing-test", slots=4, ttl_s=60)
    response = tenant.client.post(
        "/api/v1/ai-tasks/", {"prompt": "Fail once. #fake:error=503:1", "cache": False}, format="json"
    )
    assert response.status_code == 202
    run_next_message("default", response.json()["id"])

    task = AITask.objects.get(id=response.json()["id"])
    assert task.status == AITask.Status.PENDING and task.error_code == "provider_unavailable"  # a retry, later
    spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    provider = one(spans, f"chat {task.served_model}")
    assert provider.status == "error"
    assert provider.attributes["error.type"] == "provider_unavailable"
    assert provider.attributes["switchyard.cost_usd"] == 0
    assert "gen_ai.usage.output_tokens" not in provider.attributes
    assert one(spans, "run/llm.run_ai_task").attributes["switchyard.outcome"] == "retry"


def test_log_lines_carry_the_ids_of_their_span(exporter: InMemorySpanExporter) -> None:
    assert _trace_ids(None, "info", {}) == {}  # no span
    with tracing.span("a request", kind="server") as current:
        assert current is not None
        line = _trace_ids(None, "info", {"event": "hello"})
    context = current.get_span_context()
    assert line == {"event": "hello", "trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
    tracing.uninstall()
    with tracing.span("off", kind="server"):
        assert _trace_ids(None, "info", {}) == {}


def test_an_http_call_inside_a_task_is_a_client_span(exporter: InMemorySpanExporter) -> None:
    """httpx (the webhook deliveries' client): its calls are spans of the task that makes them."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        with tracing.span("run/llm.deliver_webhook", kind="consumer"), httpx.Client(trust_env=False) as client:
            assert client.post(url, json={}).status_code == 204
    finally:
        server.shutdown()
    spans = [from_sdk(s) for s in exporter.get_finished_spans()]
    run = one(spans, "run/llm.deliver_webhook")
    call = one(spans, "POST")
    assert call.kind == "client" and call.parent_id == run.span_id
    assert call.attributes["http.status_code"] == 204


class _Ok(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.django_db(transaction=True)
def test_probes_and_lone_queries_start_no_trace(tenant: Tenant, exporter: InMemorySpanExporter) -> None:
    from django.test import Client

    assert Client().get("/healthz").status_code == 200  # excluded
    assert AITask.objects.count() == 0  # a query outside any request or task
    tenant.client.get("/api/v1/ai-tasks/")
    roots = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert [s.name for s in roots] == ["GET api/v1/ai-tasks/"]
    assert len(exporter.get_finished_spans()) > 1  # its queries are in it


OFF_PROBE = """
import json, sys
import django
django.setup()
import psycopg, redis
from celery import current_app
from django.conf import settings
from opentelemetry import trace
from kernel import tracing
from llm.models import AITask
import llm.services.execution, llm.streams, llm.tasks
AITask.objects.exists()
print(json.dumps({
    "enabled": tracing.enabled(),
    "provider": type(trace.get_tracer_provider()).__name__,
    "middleware": [m for m in settings.MIDDLEWARE if "tracing" in m or "opentelemetry" in m],
    "wrapped": [f for f in (psycopg.connect, redis.Redis.execute_command) if hasattr(f, "__wrapped__")] != [],
    "loaded": sorted(m for m in sys.modules if m.startswith(PREFIXES)),
}))
""".replace("PREFIXES", repr(("opentelemetry.sdk.trace", "opentelemetry.instrumentation", "opentelemetry.exporter")))


def test_off_without_an_endpoint_nothing_is_loaded() -> None:
    """No endpoint: no provider, no instrumentation, no middleware, and neither the SDK's
    tracing nor an instrumentation is imported by a process that loaded the task code.
    (redis-py imports parts of the SDK's metrics for its own opt-in observability.)"""
    assert tracing.init(endpoint="", service_name="switchyard", role="test") is False
    out = subprocess.run(
        [sys.executable, "-c", OFF_PROBE],
        cwd=ROOT,
        env=server_env(OTEL_EXPORTER_OTLP_ENDPOINT=""),
        capture_output=True,
        check=True,
        timeout=60,
    )
    state = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert state == {
        "enabled": False,
        "provider": "ProxyTracerProvider",
        "middleware": [],
        "wrapped": False,
        "loaded": [],
    }


@pytest.mark.slow
def test_one_trace_across_the_web_and_worker_processes_by_otlp(
    collector: Collector,
    start_web: Callable[..., str],
    start_worker: Callable[..., Worker],
    start_stream_server: Callable[..., str],
    tenant: Tenant,
) -> None:
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_SERVICE_NAME": "switchyard-test",
    }
    start_worker("default", **otel)
    wait_for(lambda: (pool_slots("default") or 0) > 0, timeout=10)  # the gate admits at submit
    base = start_web(workers=1, **otel)
    stream = start_stream_server(**otel, SWITCHYARD_ROLE="stream")

    response = httpx.post(
        f"{base}/api/v1/ai-tasks/",
        json={"prompt": PROMPT, "cache": False},
        headers={"Authorization": f"Bearer {tenant.issued.key}", "X-Request-ID": "req-trace-1"},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    wait_for(lambda: AITask.objects.filter(id=task_id, status=AITask.Status.DONE).exists(), timeout=30)
    task = AITask.objects.get(id=task_id)

    def complete() -> list[Span] | None:
        spans = list(collector.spans)
        names = {s.name for s in spans}
        done = {"POST api/v1/ai-tasks/", "run/llm.run_ai_task"} <= names and any(
            s.name == "publish task-events" and s.attributes.get("switchyard.task_id") == task_id for s in spans
        )
        time.sleep(0.2)  # what the last batch still held
        return list(collector.spans) if done else None

    spans = wait_for(complete, timeout=30)
    assert isinstance(spans, list)
    tree = assert_task_trace(spans, task)
    assert tree["server"].attributes["switchyard.request_id"] == "req-trace-1"
    assert tree["run"].attributes["switchyard.request_id"] == "req-trace-1"
    assert tree["server"].resource["switchyard.role"] == "web"
    assert tree["run"].resource["switchyard.role"] == "worker-default"
    assert tree["provider"].resource["service.name"] == "switchyard-test"
    assert tree["server"].resource["service.instance.id"] != tree["run"].resource["service.instance.id"]

    # The stream role (uvicorn, ASGI): the SSE request of the finished task is a trace too.
    events = httpx.get(
        f"{stream}/api/v1/ai-tasks/{task_id}/events/", headers={"Authorization": f"Bearer {tenant.issued.key}"}
    )
    assert events.status_code == 200 and '"status": "done"' in events.text
    route = "GET api/v1/ai-tasks/<uuid:task_id>/events/"
    sse = wait_for(lambda: next((s for s in collector.spans if s.name == route), None), timeout=30)
    assert isinstance(sse, Span)
    assert sse.kind == "server" and sse.resource["switchyard.role"] == "stream"
    assert sse.attributes["http.status_code"] == 200
