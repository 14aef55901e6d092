"""Prometheus metrics shared by every role (docs/decisions/metrics.md).

Every process writes its samples to ``PROMETHEUS_MULTIPROC_DIR``, which
``bin/switchyard`` sets per process group (one directory per gunicorn master, one per
worker), so ``/metrics`` sums every gunicorn worker and a worker's port sums its pool.
Without the variable (tests, ``manage.py shell``) the process's own registry is used.

Two kinds of families:

- **Samples** (counters, histograms) recorded where things happen: HTTP requests, task
  outcomes and attempts, provider calls, cache lookups, budget rejections.
- **Scrape-time gauges** read from PostgreSQL when ``/metrics`` is scraped (queue depth
  and age, open tasks, outbox backlog, connections per role): the database is the source
  of truth, so every web process answers the same. Contexts register theirs with
  ``register_scrape_source`` (kernel imports no context).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LONG_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

HTTP_REQUESTS = Counter("switchyard_http_requests_total", "HTTP requests served", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "switchyard_http_request_seconds", "HTTP request latency", ["method", "route"], buckets=_SECONDS
)
QUERY_BUDGET_BREACHES = Counter(
    "switchyard_query_budget_breaches_total", "Requests that ran more queries than budgeted", ["route"]
)
TASK_ATTEMPTS = Counter("switchyard_task_attempts_total", "AI task attempts started (claims)", ["queue", "model"])
TASK_OUTCOMES = Counter(
    "switchyard_task_outcomes_total",
    "AI task attempts by how they ended (done, failed, retry, cancelled, discarded)",
    ["queue", "model", "outcome", "error_code"],
)
TASK_ATTEMPT_SECONDS = Histogram(
    "switchyard_task_attempt_seconds",
    "Duration of one AI task attempt",
    ["queue", "model", "outcome"],
    buckets=_LONG_SECONDS,
)
TASK_QUEUE_WAIT = Histogram(
    "switchyard_task_queue_wait_seconds",
    "From submit (or a retry's due time) to the claim by a worker",
    ["queue"],
    buckets=_LONG_SECONDS,
)
TASK_E2E = Histogram("switchyard_task_e2e_seconds", "From submit to done", ["queue", "model"], buckets=_LONG_SECONDS)
PROVIDER_LATENCY = Histogram(
    "switchyard_provider_call_seconds",
    "Provider call duration",
    ["provider", "model", "outcome"],
    buckets=_LONG_SECONDS,
)
PROVIDER_TTFT = Histogram(
    "switchyard_provider_time_to_first_token_seconds",
    "Provider time to first token",
    ["provider", "model"],
    buckets=_LONG_SECONDS,
)
CACHE_LOOKUPS = Counter("switchyard_response_cache_lookups_total", "Response cache lookups", ["result"])
BUDGET_REJECTIONS = Counter(
    "switchyard_budget_rejections_total", "Submissions refused because the budget is exhausted", ["reason"]
)
DOMAIN_ERRORS = Counter("switchyard_api_errors_total", "API errors answered, by code", ["status", "code"])


def observe_request(*, method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method=method, route=route, status=str(status)).inc()
    HTTP_LATENCY.labels(method=method, route=route).observe(seconds)


# -- scrape-time gauges ------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Gauge:
    """One scrape-time gauge family with its samples."""

    name: str
    documentation: str
    labels: tuple[str, ...]
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


ScrapeSource = Callable[[], Iterable[Gauge]]
_SOURCES: dict[str, ScrapeSource] = {}
SCRAPE_ERRORS = "switchyard_scrape_source_up"


def register_scrape_source(name: str, source: ScrapeSource) -> None:
    """Called by a context at start (AppConfig.ready): ``source`` runs at every scrape of
    ``/metrics`` and returns gauges. A failing source is reported as down, never raised."""
    _SOURCES[name] = source


class _ScrapeCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(SCRAPE_ERRORS, "1 when a scrape-time source answered", labels=["source"])
        for name, source in sorted(_SOURCES.items()):
            try:
                gauges = list(source())
            except Exception:
                log.warning("metrics_scrape_source_failed", source=name, exc_info=True)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            for gauge in gauges:
                family = GaugeMetricFamily(gauge.name, gauge.documentation, labels=list(gauge.labels))
                for values, value in gauge.samples:
                    family.add_metric(list(values), value)
                yield family
        yield up


def _kernel_source() -> Iterable[Gauge]:
    """The outbox backlog and the connections each role holds, in one query."""
    from django.db import connections

    from kernel.models import OutboxEvent

    table = OutboxEvent._meta.db_table
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT 'outbox', NULL, NULL, count(*), "  # noqa: S608 - table name from the model
            f"  COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0) FROM {table} WHERE published_at IS NULL "
            "UNION ALL SELECT 'conn', application_name, COALESCE(state, 'unknown'), count(*), 0 "
            "  FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE %s "
            "  GROUP BY application_name, state "
            "UNION ALL SELECT 'max', NULL, NULL, current_setting('max_connections')::int, 0",
            ["switchyard%"],
        )
        rows = cursor.fetchall()
    backlog = Gauge("switchyard_outbox_backlog", "Outbox events not yet published", ())
    oldest = Gauge("switchyard_outbox_oldest_unsent_seconds", "Age of the oldest unpublished outbox event", ())
    conns = Gauge(
        "switchyard_db_connections", "PostgreSQL connections by role (application_name) and state", ("role", "state")
    )
    limit = Gauge("switchyard_db_max_connections", "PostgreSQL max_connections", ())
    for kind, app, state, count, age in rows:
        if kind == "outbox":
            backlog.samples.append(((), float(count)))
            oldest.samples.append(((), float(age)))
        elif kind == "conn":
            conns.samples.append(((app.removeprefix("switchyard-"), state), float(count)))
        else:
            limit.samples.append(((), float(count)))
    return [backlog, oldest, conns, limit]


register_scrape_source("kernel", _kernel_source)


def _multiprocess_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def render() -> tuple[bytes, str]:
    """The exposition of ``/metrics``: this process group's samples and the scrape-time
    gauges."""
    registry = _multiprocess_registry() if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else REGISTRY
    scrape = CollectorRegistry()
    scrape.register(_ScrapeCollector())
    return generate_latest(registry) + generate_latest(scrape), CONTENT_TYPE_LATEST


def serve_worker_metrics() -> int | None:
    """A worker's own metrics port (``WORKER_METRICS_PORT``; bin/switchyard gives each
    worker role its ``PORT`` under honcho and in the image). Samples only: the
    scrape-time gauges are the web's. Returns the port, None when off or taken."""
    raw = os.environ.get("WORKER_METRICS_PORT", "")
    if not raw.isdigit() or int(raw) == 0:
        return None
    registry = _multiprocess_registry() if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else REGISTRY
    addr = os.environ.get("WORKER_METRICS_ADDR", "0.0.0.0")  # noqa: S104 - scraped from outside the container
    try:
        start_http_server(int(raw), addr=addr, registry=registry)
    except OSError as exc:
        log.warning("worker_metrics_port_unavailable", port=int(raw), error=str(exc))
        return None
    log.info("worker_metrics_serving", port=int(raw))
    return int(raw)
