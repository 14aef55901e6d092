"""Monthly partitions of ``analytics_taskoutcome``: create ahead, detach and drop past
retention. DDL only; the rows are the outcomes module's business.

Partitions are named ``analytics_taskoutcome_pYYYY_MM`` and bounded by UTC month
starts; only partitions with such a name are ever dropped.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from contracts.analytics import PartitionInfo, PartitionReport

PARENT = "analytics_taskoutcome"
_NAME = re.compile(rf"^{PARENT}_p(\d{{4}})_(\d{{2}})$")
_LOCK_KEY = 0x616E616C  # pg_advisory_xact_lock: one maintenance run at a time


def month_of(moment: datetime | date) -> date:
    """The first day of ``moment``'s UTC month."""
    if isinstance(moment, datetime):
        moment = moment.astimezone(UTC).date()
    return moment.replace(day=1)


def add_months(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"{PARENT}_p{month:%Y_%m}"


def _bound(month: date) -> str:
    return f"{month:%Y-%m-%d} 00:00:00+00"


def partition_create(month: date) -> bool:
    """Create the partition of ``month`` unless it exists; True when it was created."""
    month = month_of(month)
    name = partition_name(month)
    with transaction.atomic(), connection.cursor() as cursor:
        # Two workers meeting a missing month at once: the second waits, then finds it.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        row = cursor.fetchone()
        if row is not None and row[0]:
            return False
        # Names and bounds come from a date, never from input: safe to format.
        cursor.execute(
            f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF "{PARENT}" '
            f"FOR VALUES FROM ('{_bound(month)}') TO ('{_bound(add_months(month, 1))}')"
        )
    return True


def partition_list() -> list[PartitionInfo]:
    """The partitions attached to the parent table, oldest first (from pg_inherits)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT child.relname, pg_get_expr(child.relpartbound, child.oid)
              FROM pg_inherits
              JOIN pg_class child ON child.oid = pg_inherits.inhrelid
             WHERE pg_inherits.inhparent = %s::regclass
             ORDER BY child.relname
            """,
            [PARENT],
        )
        rows = cursor.fetchall()
    partitions = []
    for name, bound in rows:
        match = _NAME.match(name)
        month = date(int(match[1]), int(match[2]), 1) if match else None
        partitions.append(PartitionInfo(name=name, month=month, bound=bound))
    return partitions


def partitions_maintain(
    *, today: date | None = None, ahead: int | None = None, retention_months: int | None = None
) -> PartitionReport:
    """Keep this month and the next ``ahead`` months created; detach and drop the
    partitions of months older than ``retention_months`` before this month."""
    today = today or timezone.now().date()
    ahead = settings.ANALYTICS_PARTITIONS_AHEAD if ahead is None else ahead
    retention_months = settings.ANALYTICS_RETENTION_MONTHS if retention_months is None else retention_months
    current = month_of(today)
    created: list[str] = []
    dropped: list[str] = []
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])
        for offset in range(ahead + 1):
            month = add_months(current, offset)
            if partition_create(month):
                created.append(partition_name(month))
        cutoff = retention_cutoff(today=today, retention_months=retention_months)
        for partition in partition_list():
            if partition.month is not None and partition.month < cutoff:
                with connection.cursor() as cursor:
                    cursor.execute(f'ALTER TABLE "{PARENT}" DETACH PARTITION "{partition.name}"')
                    cursor.execute(f'DROP TABLE "{partition.name}"')
                dropped.append(partition.name)
    return PartitionReport(created=created, dropped=dropped)


def retention_cutoff(*, today: date | None = None, retention_months: int | None = None) -> date:
    """The first month still kept: events before it are past retention."""
    today = today or timezone.now().date()
    months = settings.ANALYTICS_RETENTION_MONTHS if retention_months is None else retention_months
    return add_months(month_of(today), -months)
