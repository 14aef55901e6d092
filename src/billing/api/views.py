"""Billing endpoints (SPEC §4): validate → one service call → serialize. Every answer is
scoped to the caller's organization; no ORM here and no business rules."""

from __future__ import annotations

from datetime import date
from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from billing import services
from kernel.auth import principal_of
from kernel.serializers import QuerySerializer

ERROR = OpenApiResponse(description="Error: {type, code, detail, errors?}")


def _money() -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=True)


class UsageRowSerializer(serializers.Serializer[dict[str, Any]]):
    """One report row: ``period`` or ``model``, whichever the report is grouped by."""

    period = serializers.DateField(required=False, help_text="The UTC day (group_by=day).")
    model = serializers.CharField(required=False, help_text="The model (group_by=model).")
    tasks = serializers.IntegerField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = _money()

    class Meta:
        ref_name = "BillingUsageRow"


class BudgetDetailApi(APIView):
    """This month's budget of the caller's organization."""

    class OutputSerializer(serializers.Serializer[dict[str, Any]]):
        period = serializers.CharField(help_text="The UTC calendar month, YYYY-MM.")
        limit_usd = _money()
        spent_usd = _money()
        reserved_usd = _money()
        remaining_usd = _money()

        class Meta:
            ref_name = "BillingBudget"

    query_budget = 4

    @extend_schema(operation_id="billing_budget_retrieve", responses={200: OutputSerializer, 401: ERROR})
    def get(self, request: Request) -> Response:
        status = services.budget_status(organization_id=principal_of(request).organization_id)
        return Response(self.OutputSerializer(status.model_dump()).data)


class UsageReportApi(APIView):
    """Ledger totals of the caller's organization per UTC day or per model."""

    class InputSerializer(QuerySerializer):
        start = serializers.DateField(input_formats=["%Y-%m-%d"], help_text="First UTC day, YYYY-MM-DD.")
        end = serializers.DateField(input_formats=["%Y-%m-%d"], help_text="Last UTC day (inclusive), YYYY-MM-DD.")
        group_by = serializers.ChoiceField(
            choices=["day", "model"], default="day", help_text="One row per UTC day or per model."
        )

        class Meta:
            ref_name = "BillingUsageQuery"

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            start: date = attrs["start"]
            end: date = attrs["end"]
            if end < start:
                raise serializers.ValidationError({"end": ["Must not be before start."]})
            if (end - start).days + 1 > services.MAX_REPORT_DAYS:
                raise serializers.ValidationError(
                    {"end": [f"The range spans at most {services.MAX_REPORT_DAYS} days."]}
                )
            return attrs

    class OutputSerializer(serializers.Serializer[dict[str, Any]]):
        results = UsageRowSerializer(many=True)

        class Meta:
            ref_name = "BillingUsageReport"

    query_budget = 4

    @extend_schema(
        operation_id="billing_usage_retrieve",
        parameters=[InputSerializer],
        responses={200: OutputSerializer, 400: ERROR, 401: ERROR},
    )
    def get(self, request: Request) -> Response:
        query = self.InputSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        rows = services.usage_report(organization_id=principal_of(request).organization_id, **query.validated_data)
        return Response(self.OutputSerializer({"results": [row.model_dump(exclude_none=True) for row in rows]}).data)
