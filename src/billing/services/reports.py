"""Usage and cost reports: ledger totals aggregated in SQL."""

from __future__ import annotations

from datetime import date
from typing import Literal
from uuid import UUID

from billing import money, selectors
from billing.services._common import InvalidBillingRequest
from contracts.billing import CostReportRow, UsageRow
from kernel.db import replica_reads
from users import services as users

MAX_REPORT_DAYS = 366


@replica_reads  # reports may lag the primary by the replica's delay
def usage_report(*, organization_id: UUID, start: date, end: date, group_by: Literal["day", "model"]) -> list[UsageRow]:
    """The organization's ledger totals per UTC day or per model, ``start``..``end`` inclusive."""
    if group_by not in ("day", "model"):
        raise InvalidBillingRequest("group_by must be 'day' or 'model'.")
    if end < start or (end - start).days + 1 > MAX_REPORT_DAYS:
        raise InvalidBillingRequest(f"The range must run forwards and span at most {MAX_REPORT_DAYS} days.")
    rows = selectors.usage_totals(organization_id=organization_id, start=start, end=end, group_by=group_by)
    return [
        UsageRow(
            **{"period" if group_by == "day" else "model": row["group"]},
            tasks=row["tasks"],
            input_tokens=row["input_tokens"] or 0,
            output_tokens=row["output_tokens"] or 0,
            cost_usd=money.quantize(row["cost_usd"] or money.ZERO),
        )
        for row in rows
    ]


@replica_reads
def cost_report(*, day: date, organization_id: UUID | None = None) -> list[CostReportRow]:
    """One UTC day's spend per organization and model, by organization name then model."""
    rows = selectors.cost_totals(day=day, organization_id=organization_id)
    if not rows:
        return []
    if organization_id is not None:
        names = {organization_id: users.organization_get(organization_id=organization_id).name}
    else:  # one query for every name, rather than one per organization in the report
        names = {org.id: org.name for org in users.organization_list()}
    report = [
        CostReportRow(
            organization_id=row["organization_id"],
            organization_name=names.get(row["organization_id"], "(deleted)"),
            model=row["model"],
            tasks=row["tasks"],
            input_tokens=row["input_tokens"] or 0,
            output_tokens=row["output_tokens"] or 0,
            cost_usd=money.quantize(row["cost_usd"] or money.ZERO),
        )
        for row in rows
    ]
    return sorted(report, key=lambda r: (r.organization_name.lower(), str(r.organization_id), r.model))
