"""Request-scoped middleware: request ids bound to logs, the body size limit, and the
per-request query budget. Each works under WSGI and ASGI without a thread hop."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import structlog
from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.handlers.wsgi import WSGIRequest
from django.db import connection, connections
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.utils.decorators import sync_and_async_middleware

from kernel import context, db, metrics
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
        db.reset_primary_pin()  # read-your-writes is per request (kernel.db)
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


# RFC 9110 §5.5: a field value is visible ASCII, space, tab and obs-text (the 0x80-0xFF a
# server decodes as latin-1). Anything else (NUL, CR, LF, DEL, or a code point past 0xFF,
# which only an in-process caller can send) would reach a log line, a response header or a
# database column that cannot hold it.
_VALID_HEADER_VALUE = re.compile("[\t\x20-\x7e\x80-\xff]*")


def _invalid_header(request: HttpRequest) -> str | None:
    for key, value in request.META.items():
        is_header = key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")
        if is_header and isinstance(value, str) and not _VALID_HEADER_VALUE.fullmatch(value):
            return key.removeprefix("HTTP_").replace("_", "-").title()
    return None


@sync_and_async_middleware
def HeaderCheckMiddleware(get_response: Handler) -> Handler:  # noqa: N802
    """Answer 400 for a request header holding control characters, naming the header
    (never echoing its value)."""

    def rejected(request: HttpRequest) -> JsonResponse | None:
        name = _invalid_header(request)
        if name is None:
            return None
        body = error_body(
            status_code=400, code="invalid_header", detail=f"Header {name} contains characters that are not allowed."
        )
        return JsonResponse(body, status=400)

    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            return rejected(request) or await get_response(request)

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        return rejected(request) or get_response(request)

    return middleware


def _body_too_large() -> JsonResponse:
    body = error_body(
        status_code=413,
        code="body_too_large",
        detail=f"Request body exceeds {settings.API_MAX_BODY_BYTES} bytes.",
    )
    return JsonResponse(body, status=413)


def _is_chunked(request: HttpRequest) -> bool:
    """A body framed by Transfer-Encoding (chunked) instead of a Content-Length."""
    encoding = request.META.get("HTTP_TRANSFER_ENCODING", "")
    return not request.META.get("CONTENT_LENGTH") and "chunked" in encoding.lower()


def _read_unsized_body(request: HttpRequest) -> HttpResponseBase | None:
    """Read a chunked body (at most one byte past the limit) and give the request a
    Content-Length, which is all Django and DRF look at: without one they read nothing.

    Under WSGI the server must mark its input as terminated (gunicorn does: it decodes
    the chunks and ends the stream); otherwise reading to the end could block, and the
    answer is 411. Under ASGI Django has already spooled the body to a file.
    """
    limit = settings.API_MAX_BODY_BYTES
    if isinstance(request, WSGIRequest):
        if not request.environ.get("wsgi.input_terminated"):
            body = error_body(status_code=411, code="length_required", detail="Send a Content-Length header.")
            return JsonResponse(body, status=411)
        source = request.environ["wsgi.input"]
    else:
        source = request._stream  # ASGIRequest: the spooled body file
    parts: list[bytes] = []
    received = 0
    while received <= limit:
        part = source.read(limit + 1 - received)
        if not part:
            break
        parts.append(part)
        received += len(part)
    if received > limit:
        return _body_too_large()
    data = b"".join(parts)
    request.META["CONTENT_LENGTH"] = str(len(data))
    # What HttpRequest.body itself does once it has read the body.
    request._stream = io.BytesIO(data)
    return None


@sync_and_async_middleware
def BodySizeLimitMiddleware(get_response: Handler) -> Handler:  # noqa: N802
    """Answer 413 before reading a body larger than API_MAX_BODY_BYTES; read a chunked
    body (no Content-Length) up to that limit so the view sees it."""

    def check(request: HttpRequest) -> HttpResponseBase | None:
        if _is_chunked(request):
            return _read_unsized_body(request)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        return _body_too_large() if length > settings.API_MAX_BODY_BYTES else None

    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            return check(request) or await get_response(request)

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        return check(request) or get_response(request)

    return middleware


_uncounted: ContextVar[bool] = ContextVar("queries_uncounted", default=False)


@contextmanager
def queries_uncounted() -> Iterator[None]:
    """Statements run inside are not the request's (kernel.shadow's new query paths)."""
    token = _uncounted.set(True)
    try:
        yield
    finally:
        _uncounted.reset(token)


class QueryCounter:
    """A ``connection.execute_wrapper`` that counts statements."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        if not _uncounted.get():
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
