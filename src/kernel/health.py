"""Liveness, readiness and metrics endpoints.

``/readyz`` checks the database, the cache and the broker, each with its own short
timeout, and answers 503 naming the check that failed. Nothing secret is returned.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import structlog
from celery import current_app
from django.conf import settings
from django.core.cache import cache
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET

from kernel import metrics

log = structlog.get_logger(__name__)
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


# -- worker liveness ---------------------------------------------------------------------
# Each worker pool's keeper thread (llm.services.runtime) writes a heartbeat every second;
# `manage.py worker_health --queue Q` (the image's HEALTHCHECK for worker roles) fails
# when no pool of Q has written one for --max-age seconds: the process is dead, or its
# keeper no longer ticks (a stuck process). docs/operations.md, runbook "a stuck queue".
HEARTBEAT_FORGET_S = 600.0  # an entry this old is removed by the reader (a pool long gone)


def _heartbeat_key(queue: str) -> str:
    return f"sy:pool-heartbeat:{queue}"


@dataclass(frozen=True, slots=True)
class PoolBeat:
    queue: str
    node: str  # celery node name and pid: "default@host:1234"
    at: float  # time.time() of the heartbeat
    in_flight: int
    slots: int

    @property
    def host(self) -> str:
        return self.node.rpartition(":")[0].partition("@")[2]


def pool_heartbeat(*, queues: list[str], node: str, in_flight: int, slots: int) -> None:
    """One HSET per queue, never raises (a Redis outage is a missed beat)."""
    from django_redis import get_redis_connection

    value = json.dumps({"at": time.time(), "in_flight": in_flight, "slots": slots})
    try:
        pipe = get_redis_connection("default").pipeline(transaction=False)
        for queue in queues:
            pipe.hset(_heartbeat_key(queue), node, value)
        pipe.execute()
    except Exception:
        log.warning("pool_heartbeat_failed", exc_info=True)


def pool_heartbeats(queue: str) -> list[PoolBeat]:
    """Every pool of ``queue`` that wrote a heartbeat (stale entries included, very old
    ones forgotten). Raises when Redis cannot be read."""
    from django_redis import get_redis_connection

    client = get_redis_connection("default")
    beats, forget = [], []
    for raw_node, raw in client.hgetall(_heartbeat_key(queue)).items():
        node = raw_node.decode() if isinstance(raw_node, bytes) else str(raw_node)
        try:
            data = json.loads(raw)
            beat = PoolBeat(queue, node, float(data["at"]), int(data["in_flight"]), int(data["slots"]))
        except (ValueError, KeyError, TypeError):
            forget.append(node)
            continue
        if time.time() - beat.at > HEARTBEAT_FORGET_S:
            forget.append(node)
        else:
            beats.append(beat)
    if forget:
        client.hdel(_heartbeat_key(queue), *forget)
    return beats
