"""The analytics summary: one SQL statement (GROUPING SETS, percentile_cont, a window
for the running cost), cached per organization under a versioned key.

Caching: the key holds the organization's current version (a random token in the
cache); a new event replaces the token, so every cached summary of that organization
is unreachable at once, and a lost token only costs a miss, never a stale answer. A miss
is rebuilt under a Redis lock, so a stampede of identical requests runs one query while
the others wait and read its result. Redis down: the summary is computed, uncached.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, cast
from uuid import UUID

import structlog
from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django_redis.exceptions import ConnectionInterrupted
from redis.exceptions import RedisError

from analytics.services.partitions import PARENT
from contracts.analytics import DailyPoint, Summary, SummaryDimension, SummaryFigures, SummaryGroup

log = structlog.get_logger(__name__)

DIMENSIONS: tuple[SummaryDimension, ...] = ("model", "priority", "day")
STATUSES = ("done", "failed", "cancelled")
_VERSION_TTL_S = 24 * 3600  # outlives every summary it versions
_LOCK_TIMEOUT_S = 30
CACHE_ERRORS = (ConnectionInterrupted, RedisError)

# {flags}, {keys}, {running} and {sets} are built from DIMENSIONS only (never from input).
_SQL = f"""
SELECT {{flags}}, {{keys}},
       count(*),
       count(*) FILTER (WHERE status = 'done'),
       count(*) FILTER (WHERE status = 'failed'),
       count(*) FILTER (WHERE status = 'cancelled'),
       coalesce(count(*) FILTER (WHERE status = 'failed')::float8 / nullif(count(*), 0), 0),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_seconds),
       coalesce(sum(input_tokens), 0),
       coalesce(sum(output_tokens), 0),
       coalesce(sum(cost_usd), 0),
       {{running}}
  FROM (SELECT *, (occurred_at AT TIME ZONE 'UTC')::date AS day
          FROM {PARENT}
         WHERE organization_id = %s AND occurred_at >= %s AND occurred_at < %s) AS outcome
 GROUP BY GROUPING SETS ({{sets}})
"""  # noqa: S608 - the table name is a constant


def analytics_summary(
    *, organization_id: UUID, start: date, end: date, group_by: Sequence[SummaryDimension] = DIMENSIONS
) -> Summary:
    """Outcomes of one organization on the UTC days ``start`` to ``end`` (inclusive)."""
    dimensions = tuple(d for d in DIMENSIONS if d in group_by)
    try:
        key = f"analytics:summary:{organization_id}:{_version(organization_id)}:{start}:{end}:{','.join(dimensions)}"
        cached = cache.get(key)
        if cached is not None:
            return Summary.model_validate_json(cached)
        with cache.lock(f"{key}:lock", timeout=_LOCK_TIMEOUT_S, blocking_timeout=_LOCK_TIMEOUT_S):  # type: ignore[attr-defined]
            cached = cache.get(key)  # built by whoever held the lock before us
            if cached is not None:
                return Summary.model_validate_json(cached)
            result = summary_compute(organization_id=organization_id, start=start, end=end, group_by=dimensions)
            cache.set(key, result.model_dump_json(), timeout=settings.ANALYTICS_SUMMARY_TTL_S)
            return result
    except CACHE_ERRORS as exc:  # the cache is an optimisation: Redis down still answers
        log.warning("analytics_summary_cache_unavailable", error=type(exc).__name__)
    return summary_compute(organization_id=organization_id, start=start, end=end, group_by=dimensions)


def summary_invalidate(*, organization_id: UUID) -> None:
    """A new event for the organization: its cached summaries are stale."""
    try:
        cache.set(_version_key(organization_id), uuid.uuid4().hex, timeout=_VERSION_TTL_S)
    except CACHE_ERRORS as exc:  # the 5-minute TTL bounds the staleness
        log.warning("analytics_summary_invalidate_failed", error=type(exc).__name__)


def _version_key(organization_id: UUID) -> str:
    return f"analytics:summary:version:{organization_id}"


def _version(organization_id: UUID) -> str:
    key = _version_key(organization_id)
    version = cache.get(key)
    if version is None:
        cache.add(key, uuid.uuid4().hex, timeout=_VERSION_TTL_S)
        version = cache.get(key)
    return str(version)


def summary_compute(
    *, organization_id: UUID, start: date, end: date, group_by: Sequence[SummaryDimension] = DIMENSIONS
) -> Summary:
    """The summary straight from PostgreSQL (one statement), uncached."""
    dimensions = [d for d in DIMENSIONS if d in group_by]
    sql = _SQL.format(
        flags=", ".join(f"GROUPING({d}) = 0" if d in dimensions else "false" for d in DIMENSIONS),
        keys=", ".join(d if d in dimensions else "NULL" for d in DIMENSIONS),
        # The running cost: a window over the daily rows (ordered by day within them).
        running="sum(coalesce(sum(cost_usd), 0)) OVER (PARTITION BY GROUPING(day) ORDER BY day)"
        if "day" in dimensions
        else "NULL",
        sets=", ".join(["()"] + [f"({d})" for d in dimensions]),
    )
    since = datetime.combine(start, time.min, tzinfo=UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute(sql, [organization_id, since, until])
        rows = cursor.fetchall()
    totals = _figures(None)
    by: dict[str, list[Any]] = {d: [] for d in DIMENSIONS}
    for row in rows:
        g_model, g_priority, g_day = row[0], row[1], row[2]
        if g_model:
            by["model"].append(SummaryGroup(key=row[3], **_figures(row).model_dump()))
        elif g_priority:
            by["priority"].append(SummaryGroup(key=row[4], **_figures(row).model_dump()))
        elif g_day:
            by["day"].append(row)
        else:
            totals = _figures(row)
    return Summary(
        start=start,
        end=end,
        totals=totals,
        by_model=sorted(by["model"], key=lambda g: (-g.cost_usd, g.key)) if "model" in dimensions else None,
        by_priority=sorted(by["priority"], key=lambda g: g.key) if "priority" in dimensions else None,
        daily=_daily(by["day"], start, end) if "day" in dimensions else None,
    )


def _figures(row: Sequence[Any] | None) -> SummaryFigures:
    if row is None:
        return SummaryFigures(
            tasks=0,
            by_status=dict.fromkeys(STATUSES, 0),
            failure_rate=0.0,
            p50_duration_s=None,
            p95_duration_s=None,
            input_tokens=0,
            output_tokens=0,
            cost_usd=Decimal(0),
        )
    return SummaryFigures(
        tasks=row[6],
        by_status=dict(zip(STATUSES, row[7:10], strict=True)),
        failure_rate=round(float(row[10]), 6),
        p50_duration_s=row[11],
        p95_duration_s=row[12],
        input_tokens=int(row[13]),
        output_tokens=int(row[14]),
        cost_usd=cast("Decimal", row[15]),
    )


def _daily(rows: list[Sequence[Any]], start: date, end: date) -> list[DailyPoint]:
    """Every day of the period, days without tasks at zero (the running cost carried)."""
    found = {row[5]: row for row in rows}
    points: list[DailyPoint] = []
    running = Decimal(0)
    day = start
    while day <= end:
        row = found.get(day)
        if row is not None:
            running = cast("Decimal", row[16])
        points.append(DailyPoint(day=day, cumulative_cost_usd=running, **_figures(row).model_dump()))
        day += timedelta(days=1)
    return points
