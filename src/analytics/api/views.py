"""Analytics endpoints (SPEC §4): validate → one service call → serialize. Every answer
is scoped to the caller's organization; no ORM here and no business rules."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID

from django.http import FileResponse
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from analytics import services
from kernel.auth import principal_of
from kernel.serializers import QuerySerializer

ERROR = OpenApiResponse(description="Error: {type, code, detail, errors?}")
MAX_SUMMARY_DAYS = 366
MAX_EXPORT_DAYS = 400
DEFAULT_SUMMARY_DAYS = 30


def _money() -> serializers.DecimalField:
    return serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=True)


class FiguresSerializer(serializers.Serializer[dict[str, Any]]):
    tasks = serializers.IntegerField()
    by_status = serializers.DictField(child=serializers.IntegerField(), help_text="done, failed, cancelled.")
    failure_rate = serializers.FloatField(help_text="failed / tasks (0 without tasks).")
    p50_duration_s = serializers.FloatField(allow_null=True)
    p95_duration_s = serializers.FloatField(allow_null=True)
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = _money()

    class Meta:
        ref_name = "AnalyticsFigures"


class GroupSerializer(FiguresSerializer):
    key = serializers.CharField(help_text="The model or the priority.")

    class Meta:
        ref_name = "AnalyticsGroup"


class DailySerializer(FiguresSerializer):
    day = serializers.DateField()
    cumulative_cost_usd = _money()

    class Meta:
        ref_name = "AnalyticsDay"


class SummaryApi(APIView):
    """Finished tasks of the caller's organization on UTC days ``start``..``end``
    (inclusive; default the last 30 days): counts, failure rate, duration percentiles,
    tokens and cost, by model, by priority and per day. Cached 5 minutes."""

    class InputSerializer(QuerySerializer):
        start = serializers.DateField(required=False, input_formats=["%Y-%m-%d"], help_text="First UTC day.")
        end = serializers.DateField(required=False, input_formats=["%Y-%m-%d"], help_text="Last UTC day (inclusive).")
        group_by = serializers.CharField(
            required=False,
            default="model,priority,day",
            help_text="Comma list of the breakdowns to include: model, priority, day.",
        )

        class Meta:
            ref_name = "AnalyticsSummaryQuery"

        def validate_group_by(self, value: str) -> list[str]:
            parts = [part.strip() for part in value.split(",") if part.strip()]
            unknown = sorted(set(parts) - set(services.DIMENSIONS))
            if unknown:
                raise serializers.ValidationError(f"Unknown breakdown {', '.join(unknown)}: use model, priority, day.")
            return parts

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            end: date = attrs.get("end") or timezone.now().date()
            start: date = attrs.get("start") or end - timedelta(days=DEFAULT_SUMMARY_DAYS - 1)
            if end < start:
                raise serializers.ValidationError({"end": ["Must not be before start."]})
            if (end - start).days + 1 > MAX_SUMMARY_DAYS:
                raise serializers.ValidationError({"end": [f"The range spans at most {MAX_SUMMARY_DAYS} days."]})
            return {"start": start, "end": end, "group_by": attrs["group_by"]}

    class OutputSerializer(serializers.Serializer[dict[str, Any]]):
        start = serializers.DateField()
        end = serializers.DateField()
        totals = FiguresSerializer()
        by_model = GroupSerializer(many=True, allow_null=True)
        by_priority = GroupSerializer(many=True, allow_null=True)
        daily = DailySerializer(many=True, allow_null=True)

        class Meta:
            ref_name = "AnalyticsSummary"

    query_budget = 4

    @extend_schema(
        operation_id="analytics_summary_retrieve",
        parameters=[InputSerializer],
        responses={200: OutputSerializer, 400: ERROR, 401: ERROR},
    )
    def get(self, request: Request) -> Response:
        query = self.InputSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        summary = services.analytics_summary(
            organization_id=principal_of(request).organization_id, **query.validated_data
        )
        return Response(self.OutputSerializer(summary.model_dump()).data)


class ExportSerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.UUIDField()
    # Not a ChoiceField: a second enum on a field named "status" would rename the AI
    # task's StatusEnum in the published schema.
    status = serializers.CharField(help_text="pending, running, done or failed.")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    row_count = serializers.IntegerField()
    error = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    download_url = serializers.CharField(allow_null=True, help_text="When done: the CSV, with the same API key.")

    class Meta:
        ref_name = "AnalyticsExport"


def _export_body(request: Request, info: Any) -> dict[str, Any]:
    body: dict[str, Any] = info.model_dump()
    body["download_url"] = (
        request.build_absolute_uri(reverse("analytics-export-download", args=[info.id]))
        if info.status == "done"
        else None
    )
    return dict(ExportSerializer(body).data)


class ExportCreateApi(APIView):
    """Queue a CSV export of the caller's outcomes from ``start`` to ``end``: dates
    (UTC days, ``end`` inclusive) or ISO date-times (``end`` exclusive)."""

    class InputSerializer(serializers.Serializer[dict[str, Any]]):
        start = serializers.CharField(help_text="YYYY-MM-DD or an ISO 8601 date-time.")
        end = serializers.CharField(help_text="YYYY-MM-DD (inclusive) or an ISO 8601 date-time (exclusive).")

        class Meta:
            ref_name = "AnalyticsExportRequest"

        @staticmethod
        def _moment(value: str, *, end: bool) -> datetime:
            try:
                day = date.fromisoformat(value)
            except ValueError:
                try:
                    moment = datetime.fromisoformat(value)
                except ValueError:
                    raise serializers.ValidationError("Use YYYY-MM-DD or an ISO 8601 date-time.") from None
                return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
            return datetime.combine(day + timedelta(days=1) if end else day, time.min, tzinfo=UTC)

        def validate_start(self, value: str) -> datetime:
            return self._moment(value, end=False)

        def validate_end(self, value: str) -> datetime:
            return self._moment(value, end=True)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if attrs["end"] <= attrs["start"]:
                raise serializers.ValidationError({"end": ["Must be after start."]})
            if attrs["end"] - attrs["start"] > timedelta(days=MAX_EXPORT_DAYS):
                raise serializers.ValidationError({"end": [f"The range spans at most {MAX_EXPORT_DAYS} days."]})
            return attrs

    query_budget = 4

    @extend_schema(
        operation_id="analytics_exports_create",
        request=InputSerializer,
        responses={202: ExportSerializer, 400: ERROR, 401: ERROR},
    )
    def post(self, request: Request) -> Response:
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        info = services.export_request(organization_id=principal_of(request).organization_id, **body.validated_data)
        location = reverse("analytics-export-detail", args=[info.id])
        return Response(_export_body(request, info), status=status.HTTP_202_ACCEPTED, headers={"Location": location})


class ExportDetailApi(APIView):
    """An export's status, row count and, when done, its download link."""

    query_budget = 3

    @extend_schema(operation_id="analytics_exports_retrieve", responses={200: ExportSerializer, 401: ERROR, 404: ERROR})
    def get(self, request: Request, export_id: UUID) -> Response:
        info = services.export_get(organization_id=principal_of(request).organization_id, export_id=export_id)
        return Response(_export_body(request, info))


class CSVRenderer(BaseRenderer):
    media_type = "text/csv"
    format = "csv"
    charset = "utf-8"

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        return data if isinstance(data, bytes) else str(data).encode()


class ExportDownloadApi(APIView):
    """The finished export as CSV (streamed from storage); 409 while it is not done."""

    renderer_classes = [JSONRenderer, CSVRenderer]  # errors stay JSON
    query_budget = 3

    @extend_schema(
        operation_id="analytics_exports_download",
        responses={(200, "text/csv"): OpenApiTypes.BINARY, 401: ERROR, 404: ERROR, 409: ERROR},
    )
    def get(self, request: Request, export_id: UUID) -> FileResponse:
        handle, name = services.export_open(organization_id=principal_of(request).organization_id, export_id=export_id)
        return FileResponse(handle, as_attachment=True, filename=name, content_type="text/csv")
