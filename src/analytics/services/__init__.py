"""Public surface of the analytics context: recording task outcomes from domain events,
their summaries, CSV exports and partition upkeep. The API, the tasks, the admin and
other contexts call only what is exported here."""

from analytics.services.exports import (
    ExportNotFound,
    ExportNotReady,
    export_get,
    export_open,
    export_request,
    export_run,
    exports_cleanup,
)
from analytics.services.outcomes import outcome_totals, task_outcome_record
from analytics.services.partitions import partition_create, partition_list, partitions_maintain
from analytics.services.summary import DIMENSIONS, analytics_summary, summary_compute, summary_invalidate

__all__ = [
    "DIMENSIONS",
    "ExportNotFound",
    "ExportNotReady",
    "analytics_summary",
    "export_get",
    "export_open",
    "export_request",
    "export_run",
    "exports_cleanup",
    "outcome_totals",
    "partition_create",
    "partition_list",
    "partitions_maintain",
    "summary_compute",
    "summary_invalidate",
    "task_outcome_record",
]
