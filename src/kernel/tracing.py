"""OpenTelemetry traces, on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (``KernelConfig.ready``
calls ``init`` in every role: web, stream, workers, beat). Off otherwise, and off means
nothing: no provider, no instrumentation, no middleware, not even the SDK imported.

On, the kept instrumentations do the work — Django (the server span of every request),
Celery (a producer span per message sent, whose context travels in the message headers,
and a consumer span per task run that continues the sender's trace), psycopg, redis and
httpx (webhooks) — and spans go by OTLP/HTTP (protobuf) to ``<endpoint>/v1/traces``. The
exporter reads the other standard ``OTEL_EXPORTER_OTLP_*`` variables itself (headers,
timeout, compression, certificate). The provider is also the global one, so libraries that
trace through the OpenTelemetry API (the Anthropic SDK's call spans) join the traces.

Only traces that begin with a request, a message sent or a task received are recorded
(``_sampler``): a query or a Redis command outside any of them — the worker keeper thread's
lease renewals and cancel polls — would be a trace of one span, over and over.

What the llm context adds (the GenAI span of a provider call, the queue wait, the stream
publish, a task's trace continued by the gate) goes through the helpers at the end, which
cost one test of a module global while tracing is off. This module must not import a context (import-linter).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from asgiref.sync import iscoroutinefunction
from django.utils.decorators import sync_and_async_middleware

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponseBase
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

Kind = Literal["internal", "client", "server", "producer", "consumer"]
AttributeValue = str | bool | int | float
MIDDLEWARE = "kernel.tracing.TracingMiddleware"
# Probes and scrapes every few seconds are not worth a trace each.
EXCLUDED_URLS = "/healthz,/readyz,/metrics"
TRACER_NAME = "switchyard"


@dataclass
class _State:
    provider: TracerProvider
    tracer: Tracer
    instrumentors: list[Any]


_state: _State | None = None


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL, as the OpenTelemetry SDK builds it
    from ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    return f"{endpoint.rstrip('/')}/v1/traces"


def init(*, endpoint: str, service_name: str, role: str, sample_rate: float = 1.0) -> bool:
    """Start tracing to the collector at ``endpoint`` (a no-op without one). True when on."""
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Batched: spans leave from a thread of the SDK, never from a request or a task.
    install(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))),
        service_name=service_name,
        role=role,
        sample_rate=sample_rate,
    )
    return True


def install(
    processor: SpanProcessor | SpanExporter,
    *,
    service_name: str = "switchyard",
    role: str = "app",
    sample_rate: float = 1.0,
) -> TracerProvider:
    """Turn tracing on with ``processor`` (an exporter is exported span by span, as tests
    want: ``install(InMemorySpanExporter())``). ``uninstall`` turns it off again."""
    global _state
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    uninstall()
    resource = Resource.create(
        {
            "service.name": service_name,
            "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
            "switchyard.role": role,
        }
    )
    provider = TracerProvider(resource=resource, sampler=_sampler(sample_rate))
    provider.add_span_processor(processor if isinstance(processor, SpanProcessor) else SimpleSpanProcessor(processor))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):  # the API takes one global, once
        trace.set_tracer_provider(provider)
    _state = _State(provider=provider, tracer=provider.get_tracer(TRACER_NAME), instrumentors=_instrument(provider))
    return provider


def uninstall() -> None:
    """Remove the instrumentations and flush what is left (tests; the process exit does it
    for a role through the SDK's own atexit hook)."""
    global _state
    state, _state = _state, None
    if state is None:
        return
    for instrumentor in reversed(state.instrumentors):
        instrumentor.uninstrument()
    from django.conf import settings

    settings.MIDDLEWARE = [path for path in settings.MIDDLEWARE if path != MIDDLEWARE]
    state.provider.shutdown()


def enabled() -> bool:
    return _state is not None


def _instrument(provider: TracerProvider) -> list[Any]:
    from django.conf import settings
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    instrumentors: list[Any] = []
    django = DjangoInstrumentor()
    django.instrument(tracer_provider=provider, excluded_urls=EXCLUDED_URLS, response_hook=_tag_request_id)
    instrumentors.append(django)
    # Its middleware is sync-only: under ASGI one such middleware runs the whole chain in
    # a thread and every open SSE stream holds one (kernel.middleware.StaticFilesMiddleware).
    # The same hooks, called from an async-capable middleware instead.
    settings.MIDDLEWARE = [
        MIDDLEWARE if path == DjangoInstrumentor._opentelemetry_middleware else path for path in settings.MIDDLEWARE
    ]
    for instrumentor in (CeleryInstrumentor(), PsycopgInstrumentor(), RedisInstrumentor(), HTTPXClientInstrumentor()):
        # With the threads pool (bin/switchyard) a worker is one process: its signals are
        # connected here. A prefork child inherits them; the SDK restarts its export thread.
        instrumentor.instrument(tracer_provider=provider)
        instrumentors.append(instrumentor)
    return instrumentors


def _sampler(rate: float) -> Any:
    """Parent-based: a span follows its parent's decision. A root — a request, a message
    sent, a task received — starts a trace at ``rate``; a lone query or Redis command does not."""
    from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult, TraceIdRatioBased
    from opentelemetry.trace import SpanKind

    ratio = TraceIdRatioBased(rate)
    starts = (SpanKind.SERVER, SpanKind.PRODUCER, SpanKind.CONSUMER)

    class Roots(Sampler):
        def should_sample(
            self,
            parent_context: Any,
            trace_id: int,
            name: str,
            kind: SpanKind | None = None,
            attributes: Any = None,
            links: Sequence[Any] | None = None,
            trace_state: Any = None,
        ) -> SamplingResult:
            if kind not in starts:
                return SamplingResult(Decision.DROP)
            return ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"SwitchyardRoots{{{ratio.get_description()}}}"

    return ParentBased(root=Roots())


def _tag_request_id(span: Span, request: HttpRequest, response: HttpResponseBase) -> None:
    """The request id (kernel.middleware) on the server span: a trace and its log lines
    are found by the same id."""
    request_id = getattr(request, "request_id", None)
    if request_id and span.is_recording():
        span.set_attribute("switchyard.request_id", str(request_id))


# ---------------------------------------------------------------------------------------
# Django: the instrumentation's middleware hooks, from a middleware Django can await.
# ---------------------------------------------------------------------------------------
type Handler = Callable[[HttpRequest], Any]  # lazy: HttpRequest is only imported for the type checker


@sync_and_async_middleware
def TracingMiddleware(get_response: Handler) -> Handler:  # noqa: N802
    """The server span of a request (opentelemetry-instrumentation-django's hooks), in the
    mode of the chain: an async handler is awaited, not run in a thread."""
    from opentelemetry.instrumentation.django.middleware.otel_middleware import _DjangoMiddleware

    otel = _DjangoMiddleware(get_response)

    def finish(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        otel.process_view(request, None)  # the route (request.resolver_match is known now)
        return otel.process_response(request, response)

    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            otel.process_request(request)
            return finish(request, await get_response(request))

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        otel.process_request(request)
        return finish(request, get_response(request))

    return middleware


# ---------------------------------------------------------------------------------------
# Spans of the application's own (the llm context's GenAI span, the queue wait).
# ---------------------------------------------------------------------------------------
def tracer() -> Tracer | None:
    return _state.tracer if _state is not None else None


def current_ids() -> tuple[str, str] | None:
    """The trace and span ids (hex) of the current span while tracing is on and it is
    recorded: what a log line carries to be found beside its trace."""
    if _state is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def current_span() -> Span | None:
    """The span of the current request or task while tracing is on and it is recorded."""
    if _state is None:
        return None
    from opentelemetry import trace

    span = trace.get_current_span()
    return span if span.is_recording() else None


def start_span(
    name: str,
    *,
    kind: Kind = "internal",
    attributes: Mapping[str, AttributeValue] | None = None,
    start_time_ns: int | None = None,
    parent: Span | None = None,
) -> Span | None:
    """A span the caller ends (``span.end()``), child of ``parent`` or of the current span;
    None while tracing is off. It is not made current."""
    if _state is None:
        return None
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    return _state.tracer.start_span(
        name, context=context, kind=_kind(kind), attributes=attributes, start_time=start_time_ns
    )


@contextmanager
def span(
    name: str, *, kind: Kind = "internal", attributes: Mapping[str, AttributeValue] | None = None
) -> Iterator[Span | None]:
    """A current span around the block (an exception out of it marks the span failed);
    yields None while tracing is off."""
    if _state is None:
        yield None
        return
    with _state.tracer.start_as_current_span(name, kind=_kind(kind), attributes=attributes) as current:
        yield current


def use(span: Span | None) -> Any:
    """Make ``span`` current for a block without ending it (``with tracing.use(span):``)."""
    if span is None:
        return nullcontext()
    from opentelemetry import trace

    return trace.use_span(span, end_on_exit=False, record_exception=True, set_status_on_exception=True)


def quiet() -> Any:
    """No spans from the instrumentations inside the block (a chunk of a streamed answer
    is one Redis command each: hundreds per task)."""
    if _state is None:
        return nullcontext()
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    return suppress_instrumentation()


def carrier() -> dict[str, str] | None:
    """The current span's context as W3C ``traceparent`` headers, to continue its trace
    later (``continued``); None without a recorded span."""
    if current_span() is None:
        return None
    from opentelemetry.propagate import inject

    headers: dict[str, str] = {}
    inject(headers)
    return headers or None


def continued(headers: Mapping[str, str]) -> Any:
    """A block whose spans continue the trace ``headers`` came from (``carrier``)."""
    if _state is None:
        return nullcontext()
    from opentelemetry import context
    from opentelemetry.propagate import extract

    @contextmanager
    def block() -> Iterator[None]:
        token = context.attach(extract(headers))
        try:
            yield
        finally:
            context.detach(token)

    return block()


def remote_parent(span: Span) -> Span | None:
    """The span ``span`` continues from another process (the producer span of the message
    a task run consumes), as a parent for siblings of ``span``; None if it has none."""
    from opentelemetry import trace

    parent = getattr(span, "parent", None)  # the SDK's span has it; the API's does not
    if parent is None or not parent.is_valid:
        return None
    return trace.NonRecordingSpan(parent)


def _kind(kind: Kind) -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind[kind.upper()]
