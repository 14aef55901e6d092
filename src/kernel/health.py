"""Liveness, readiness and metrics endpoints.

``/readyz`` checks the database, the cache and the broker, each with its own short
timeout, and answers 503 naming the check that failed. Nothing secret is returned.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from kernel import metrics

CHECK_TIMEOUT_S = 2.0


def _database() -> None:
    with connections["default"].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def _cache() -> None:
    key = "readyz:probe"
    cache.set(key, "1", timeout=5)
    if cache.get(key) != "1":
        raise RuntimeError("cache did not return the value just written")


def _broker() -> None:
    with current_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=int(CHECK_TIMEOUT_S))


CHECKS: dict[str, Callable[[], None]] = {"database": _database, "cache": _cache, "broker": _broker}


def _run(check: Callable[[], None]) -> dict[str, object]:
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # a readiness probe reports, it does not raise
        return {"ok": False, "error": type(exc).__name__, "ms": round((time.perf_counter() - started) * 1000, 1)}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    results: dict[str, dict[str, object]] = {}
    # The database check must run on this thread: Django connections are per thread.
    results["database"] = _run(CHECKS["database"])
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(_run, CHECKS[name]) for name in ("cache", "broker")}
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=CHECK_TIMEOUT_S + 1)
            except FutureTimeout:
                results[name] = {"ok": False, "error": "Timeout"}
    ok = all(result["ok"] for result in results.values())
    body = {"status": "ok" if ok else "unavailable", "checks": results}
    return JsonResponse(body, status=200 if ok else 503)


def _metrics_authorized(request: HttpRequest) -> bool:
    """With METRICS_TOKEN set (required when DEBUG is off), only ``Authorization: Bearer
    <token>``, compared in constant time."""
    token: str = settings.METRICS_TOKEN
    if not token:
        return True
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(presented.strip().encode(), token.encode())


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _metrics_authorized(request):
        response = JsonResponse({"detail": "Metrics need Authorization: Bearer $METRICS_TOKEN."}, status=401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    payload, content_type = metrics.render()
    return HttpResponse(payload, content_type=content_type)
