"""Request-scoped middleware: request ids bound to logs, the body size limit, and the
per-request query budget. Each works under WSGI and ASGI without a thread hop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.db import connection, connections
from django.http import HttpRequest, HttpResponseBase
from django.utils.decorators import sync_and_async_middleware

from kernel import context, metrics
from kernel.errors import error_body

log = structlog.get_logger(__name__)
PROBE_PATHS = frozenset({"/healthz", "/readyz"})

Handler = Callable[[HttpRequest], Any]


@sync_and_async_middleware
def HealthProbeMiddleware(get_response: Handler) -> Handler:  # noqa: N802
    """Answer liveness and readiness probes before anything reads the Host header:
    orchestrators probe the pod or container address, which is rarely in ALLOWED_HOSTS."""
    from kernel import health

    def probe(request: HttpRequest) -> HttpResponseBase:
        return health.healthz(request) if request.path == "/healthz" else health.readyz(request)

    def probe_in_thread(request: HttpRequest) -> HttpResponseBase:
        try:
            return probe(request)
        finally:
            connections.close_all()  # a pooled connection goes back; the thread keeps none

    def is_probe(request: HttpRequest) -> bool:
        return request.path in PROBE_PATHS and request.method in ("GET", "HEAD")

    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            if is_probe(request):
                return await sync_to_async(probe_in_thread, thread_sensitive=False)(request)
            response: HttpResponseBase = await get_response(request)
            return response

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        return probe(request) if is_probe(request) else get_response(request)

    return middleware


def _route_label(request: HttpRequest) -> str:
    match = getattr(request, "resolver_match", None)
    if match is not None and match.route:
        return str(match.route)
    return request.path.lstrip("/") if request.path in PROBE_PATHS else "unmatched"


@sync_and_async_middleware
def RequestIdMiddleware(get_response: Handler) -> Handler:  # noqa: N802 - Django naming
    """Honour or mint ``X-Request-ID``, bind it to every log line, return it, and count
    the request in Prometheus."""

    def before(request: HttpRequest) -> float:
        context.clear()
        request_id = context.new_request_id(request.headers.get(context.REQUEST_ID_HEADER))
        request.request_id = request_id  # type: ignore[attr-defined]
        context.bind(request_id=request_id, method=request.method, path=request.path)
        return time.perf_counter()

    def after(request: HttpRequest, response: HttpResponseBase, started: float) -> HttpResponseBase:
        response[context.REQUEST_ID_HEADER] = request.request_id  # type: ignore[attr-defined]
        metrics.observe_request(
            method=request.method or "",
            route=_route_label(request),
            status=response.status_code,
            seconds=time.perf_counter() - started,
        )
        return response

    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            started = before(request)
            response = await get_response(request)
            return after(request, response, started)

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        started = before(request)
        return after(request, get_response(request), started)

    return middleware


@sync_and_async_middleware
def BodySizeLimitMiddleware(get_response: Handler) -> Handler:  # noqa: N802
    """Answer 413 before reading a body larger than API_MAX_BODY_BYTES."""
    from django.http import JsonResponse

    def too_large(request: HttpRequest) -> JsonResponse | None:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.API_MAX_BODY_BYTES:
            body = error_body(
                status_code=413,
                code="body_too_large",
                detail=f"Request body exceeds {settings.API_MAX_BODY_BYTES} bytes.",
            )
            return JsonResponse(body, status=413)
        return None

    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            return too_large(request) or await get_response(request)

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        return too_large(request) or get_response(request)

    return middleware


class QueryCounter:
    """A ``connection.execute_wrapper`` that counts statements."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        self.count += 1
        return execute(sql, params, many, context)


@sync_and_async_middleware
def QueryBudgetMiddleware(get_response: Handler) -> Handler:  # noqa: N802
    """Log a warning when a request runs more queries than its budget.

    A view may set ``query_budget`` on itself to override QUERY_BUDGET_DEFAULT. Async
    views (SSE) hold no connection, so they are not counted.
    """

    def check(request: HttpRequest, counter: QueryCounter) -> None:
        match = getattr(request, "resolver_match", None)
        view_class = getattr(getattr(match, "func", None), "view_class", None)
        budget = getattr(view_class, "query_budget", settings.QUERY_BUDGET_DEFAULT)
        if counter.count > budget:
            metrics.QUERY_BUDGET_BREACHES.labels(route=_route_label(request)).inc()
            log.warning("query_budget_exceeded", queries=counter.count, budget=budget, route=_route_label(request))

    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            response: HttpResponseBase = await get_response(request)
            return response

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        counter = QueryCounter()
        with connection.execute_wrapper(counter):
            response: HttpResponseBase = get_response(request)
        check(request, counter)
        return response

    return middleware


@sync_and_async_middleware
def StaticFilesMiddleware(get_response: Handler) -> Handler:  # noqa: N802
    """WhiteNoise (static files for the admin and the API docs), async-capable.

    WhiteNoise's own middleware is sync-only, and one sync-only middleware makes Django
    run the whole chain in a thread under ASGI: every open SSE stream then held a thread
    of the stream role, blocked until the stream ended (issue 9's fan-out bench: ~700
    threads for 1,000 clients). Under ASGI this serves a static file directly (WhiteNoise
    looks it up in memory; with autorefresh, in a thread) and awaits the view otherwise.
    """
    from whitenoise.middleware import WhiteNoiseMiddleware  # type: ignore[import-untyped]

    whitenoise = WhiteNoiseMiddleware(get_response)
    if not iscoroutinefunction(get_response):
        return whitenoise

    def find(path: str) -> Any:
        return whitenoise.find_file(path) if whitenoise.autorefresh else whitenoise.files.get(path)

    async def amiddleware(request: HttpRequest) -> HttpResponseBase:
        if whitenoise.autorefresh:
            static_file = await sync_to_async(find, thread_sensitive=False)(request.path_info)
        else:
            static_file = find(request.path_info)
        if static_file is not None:
            return whitenoise.serve(static_file, request)
        response: HttpResponseBase = await get_response(request)
        return response

    return amiddleware
