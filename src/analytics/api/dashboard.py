"""The dashboard: one server-rendered page of charts for a person signed in with a
Django session. Staff see any organization (and the platform's queues); other users
see the organizations they are members of. Data comes from services only: analytics'
summary, llm's queue depths, billing's budget."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast
from uuid import UUID

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from analytics import services
from billing import services as billing
from contracts.users import Organization
from llm import services as llm
from users import services as users

DAYS = 30


def _organizations(request: HttpRequest) -> list[Organization]:
    user = request.user
    if user.is_staff:
        return users.organization_list()
    return users.organization_list_for_member(user_id=cast("int", user.pk))


def _chosen(request: HttpRequest, organizations: list[Organization]) -> Organization:
    wanted = request.GET.get("org", "")
    if not wanted:
        return organizations[0]
    try:
        wanted_id = UUID(wanted)
    except ValueError:
        raise Http404("No such organization.") from None
    for organization in organizations:
        if organization.id == wanted_id:
            return organization
    raise Http404("No such organization.")  # another organization's id looks like a missing one


@require_GET
@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    organizations = _organizations(request)
    if not organizations:
        return render(request, "analytics/dashboard_empty.html", status=403)
    organization = _chosen(request, organizations)
    end = timezone.now().date()
    start = end - timedelta(days=DAYS - 1)
    summary = services.analytics_summary(organization_id=organization.id, start=start, end=end)
    platform = bool(request.user.is_staff)
    depths = llm.queue_depths(organization_id=None if platform else organization.id)
    budget = billing.budget_status(organization_id=organization.id)
    daily = summary.daily or []
    data: dict[str, Any] = {
        "days": [point.day.isoformat() for point in daily],
        "cost": [float(point.cost_usd) for point in daily],
        "cumulative_cost": [float(point.cumulative_cost_usd) for point in daily],
        "p95": [point.p95_duration_s for point in daily],
        "status": summary.totals.by_status,
        "queues": [depth.model_dump() for depth in depths],
        "budget": {
            "limit": float(budget.limit_usd),
            "spent": float(budget.spent_usd),
            "reserved": float(budget.reserved_usd),
            "remaining": float(budget.remaining_usd),
        },
    }
    used = (budget.spent_usd + budget.reserved_usd) / budget.limit_usd * 100 if budget.limit_usd else None
    context = {
        "organizations": organizations,
        "organization": organization,
        "summary": summary,
        "budget": budget,
        "budget_used_percent": used,
        "queues_scope": "all organizations" if platform else organization.name,
        "data": data,
    }
    return render(request, "analytics/dashboard.html", context)
