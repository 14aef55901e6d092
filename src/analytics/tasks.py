"""Analytics Celery tasks (queue ``low``, beat): ids in, one service call, no logic.

Exports get their own time limits: a large export legitimately outlives an AI task's
deadline (the threads pool does not enforce Celery's limits; they hold on prefork).
"""

from __future__ import annotations

from uuid import UUID

from celery import shared_task

from analytics import services

EXPORT_SOFT_TIME_LIMIT_S = 1800
EXPORT_TIME_LIMIT_S = 1900


@shared_task(
    name="analytics.export_csv",
    ignore_result=True,
    soft_time_limit=EXPORT_SOFT_TIME_LIMIT_S,
    time_limit=EXPORT_TIME_LIMIT_S,
)
def export_csv_task(export_id: str) -> int:
    info = services.export_run(export_id=UUID(export_id))
    return info.row_count if info else 0


@shared_task(name="analytics.maintain_partitions", ignore_result=True)
def maintain_partitions_task() -> dict[str, list[str]]:
    report = services.partitions_maintain()
    return report.model_dump()


@shared_task(name="analytics.cleanup_exports", ignore_result=True)
def cleanup_exports_task() -> int:
    return services.exports_cleanup()
