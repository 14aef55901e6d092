"""Outcomes live in monthly partitions: the catalog says so, one month's query reads one
partition, beat's upkeep creates months ahead and drops those past retention, and the
migration that partitioned the table kept every existing row."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from analytics import services
from analytics.models import TaskOutcome
from analytics.services.partitions import PARENT, add_months, month_of, partition_name
from contracts.events import AITaskFinished


def event(org: uuid.UUID, at: datetime, **overrides: object) -> AITaskFinished:
    fields: dict[str, object] = {
        "occurred_at": at,
        "task_id": uuid.uuid4(),
        "organization_id": org,
        "api_key_id": None,
        "status": "done",
        "model": "fake-small",
        "priority": "normal",
        "cached": False,
        "attempts": 1,
        "input_tokens": 10,
        "output_tokens": 20,
        "cost_usd": Decimal("0.01"),
        "error_code": None,
        "created_at": at,
        "started_at": at,
        "completed_at": at,
        "duration_seconds": 1.0,
    } | overrides
    return AITaskFinished.model_validate(fields)


def _partitions() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = %s::regclass ORDER BY 1",
            [PARENT],
        )
        return [name for (name,) in cursor.fetchall()]


@pytest.mark.django_db
def test_outcomes_table_is_range_partitioned_on_occurred_at_with_months_ahead() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT p.partstrat, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_partitioned_table p "
            "JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0] "
            "WHERE p.partrelid = %s::regclass",
            [PARENT],
        )
        assert cursor.fetchall() == [("r", "occurred_at", "timestamp with time zone")]
    services.partitions_maintain()
    this_month = month_of(timezone.now())
    for offset in range(4):  # this month and the next three
        assert partition_name(add_months(this_month, offset)) in _partitions()
    bounds = {p.name: p.bound for p in services.partition_list()}
    start, end = this_month, add_months(this_month, 1)
    assert bounds[partition_name(this_month)] == (
        f"FOR VALUES FROM ('{start:%Y-%m-%d} 00:00:00+00') TO ('{end:%Y-%m-%d} 00:00:00+00')"
    )


@pytest.mark.django_db
def test_a_one_month_query_scans_one_partition() -> None:
    services.partitions_maintain()
    month = month_of(timezone.now())
    since = datetime(month.year, month.month, 1, tzinfo=UTC)
    until = datetime(add_months(month, 1).year, add_months(month, 1).month, 1, tzinfo=UTC)
    query = TaskOutcome.objects.filter(organization_id=uuid.uuid4(), occurred_at__gte=since, occurred_at__lt=until)
    plan = query.explain()
    scanned = [name for name in _partitions() if name in plan]
    assert scanned == [partition_name(month)], plan


@pytest.mark.django_db
def test_upkeep_drops_partitions_past_retention_and_creates_months_ahead() -> None:
    org = uuid.uuid4()
    old = datetime(2019, 3, 15, tzinfo=UTC)
    services.partition_create(date(2019, 3, 1))
    with connection.cursor() as cursor:  # a row there, written before the retention moved on
        cursor.execute(
            f"INSERT INTO {PARENT} (event_id, task_id, organization_id, status, model, priority, cached, attempts, "
            "input_tokens, output_tokens, cost_usd, error_code, completed_at, occurred_at, recorded_at) "
            "VALUES (%s, %s, %s, 'done', 'm', 'normal', false, 1, 1, 1, 0, '', %s, %s, now())",
            [uuid.uuid4(), uuid.uuid4(), org, old, old],
        )
    report = services.partitions_maintain(today=date(2020, 5, 10), ahead=3, retention_months=13)
    assert "analytics_taskoutcome_p2019_03" in report.dropped
    assert "analytics_taskoutcome_p2019_03" not in _partitions()
    assert TaskOutcome.objects.filter(organization_id=org).count() == 0
    assert report.created == [f"analytics_taskoutcome_p2020_{m:02}" for m in (5, 6, 7, 8)]
    # April 2019 is the 13th month before May 2020: kept.
    services.partition_create(date(2019, 4, 1))
    again = services.partitions_maintain(today=date(2020, 5, 10), ahead=3, retention_months=13)
    assert again.created == [] and "analytics_taskoutcome_p2019_04" not in again.dropped
    services.partitions_maintain(today=date(2020, 5, 10), ahead=0, retention_months=1)  # tidy the test months
    assert not [name for name in _partitions() if name.startswith("analytics_taskoutcome_p2019")]


@pytest.mark.django_db
def test_an_event_in_a_month_without_partition_creates_it_and_is_idempotent() -> None:
    month = add_months(month_of(timezone.now()), 7)  # beyond what beat keeps ahead
    at = datetime(month.year, month.month, 2, 8, tzinfo=UTC)
    finished = event(uuid.uuid4(), at)
    assert services.task_outcome_record(finished) is True
    assert services.task_outcome_record(finished) is False
    assert partition_name(month) in _partitions()
    assert TaskOutcome.objects.filter(event_id=finished.event_id).count() == 1


@pytest.mark.django_db
def test_an_event_past_retention_is_not_recorded() -> None:
    finished = event(uuid.uuid4(), timezone.now() - timedelta(days=31 * 15))
    assert services.task_outcome_record(finished) is False
    assert not TaskOutcome.objects.filter(event_id=finished.event_id).exists()


@pytest.mark.django_db(transaction=True)
def test_partitioning_migration_keeps_existing_rows() -> None:
    executor = MigrationExecutor(connection)
    executor.migrate([("analytics", "0001_initial")])
    org = uuid.uuid4()
    completed = [datetime(2026, 9, 30, 23, 59, tzinfo=UTC), datetime(2026, 10, 1, 0, 0, tzinfo=UTC)]
    with connection.cursor() as cursor:
        for i, at in enumerate(completed, start=1):
            cursor.execute(
                "INSERT INTO analytics_taskoutcome (id, event_id, task_id, organization_id, status, model, priority, "
                "cached, attempts, input_tokens, output_tokens, cost_usd, error_code, completed_at, recorded_at) "
                "VALUES (%s, %s, %s, %s, 'done', 'fake-small', 'normal', false, 1, %s, 1, 0.5, '', %s, now())",
                [i * 100, uuid.uuid4(), uuid.uuid4(), org, i, at],
            )
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes("analytics"))
    rows = list(TaskOutcome.objects.filter(organization_id=org).order_by("id").values_list("id", "occurred_at"))
    assert rows == [(100, completed[0]), (200, completed[1])]
    names = _partitions()
    assert {"analytics_taskoutcome_p2026_09", "analytics_taskoutcome_p2026_10"} <= set(names)
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('analytics_taskoutcome_unpartitioned')")
        assert cursor.fetchone() == (None,)
    # New rows continue the identity after the copied ones.
    assert services.task_outcome_record(event(org, timezone.now())) is True
    assert TaskOutcome.objects.filter(organization_id=org).order_by("-id").values_list("id", flat=True)[0] > 200


def test_beat_keeps_partitions_and_removes_old_exports_on_the_low_queue() -> None:
    from config.celery import app

    tasks = {entry["task"]: entry["schedule"] for entry in app.conf.beat_schedule.values()}
    assert tasks["analytics.maintain_partitions"] <= 3600  # a new month never waits long
    assert "analytics.cleanup_exports" in tasks
    for name in ("analytics.maintain_partitions", "analytics.cleanup_exports", "analytics.export_csv"):
        assert app.amqp.router.route({}, name)["queue"].name == "low"
