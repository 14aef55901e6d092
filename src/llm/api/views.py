"""AI task endpoints: validate → one service call → serialize. No ORM, no business rules."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from contracts.llm import TaskSubmission
from kernel import services as kernel
from kernel.auth import principal_of
from llm import services
from llm.api.serializers import (
    TaskListQuerySerializer,
    TaskOutputSerializer,
    TaskPageSerializer,
    TaskSubmitInputSerializer,
)

IDEMPOTENCY_HEADER = "Idempotency-Key"
ERROR = OpenApiResponse(description="Error: {type, code, detail, errors?}")


def _task_body(task: Any) -> dict[str, Any]:
    return dict(TaskOutputSerializer(task.model_dump()).data)


class AITaskListCreateApi(APIView):
    # The first submit of a month also creates the budget period rows; with an
    # Idempotency-Key, the key lock, its lookup and the stored answer add three.
    query_budget = 18

    @extend_schema(
        operation_id="ai_tasks_create",
        request=TaskSubmitInputSerializer,
        parameters=[OpenApiParameter(IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER, required=False)],
        responses={202: TaskOutputSerializer, 400: ERROR, 402: ERROR, 409: ERROR, 422: ERROR, 429: ERROR},
    )
    def post(self, request: Request) -> Response:
        principal = principal_of(request)
        serializer = TaskSubmitInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        submission = TaskSubmission(
            organization_id=principal.organization_id,
            api_key_id=principal.api_key_id,
            prompt=data["prompt"],
            model=data.get("model") or settings.LLM_DEFAULT_MODEL,
            priority=data["priority"],
            max_tokens=data["max_tokens"],
            metadata=data["metadata"],
            callback_url=data.get("callback_url"),
            use_cache=data["cache"],
            request_id=getattr(request, "request_id", None),
        )

        def submit() -> tuple[int, Any, dict[str, str]]:
            task = services.task_submit(submission)
            return status.HTTP_202_ACCEPTED, _task_body(task), {"Location": f"/api/v1/ai-tasks/{task.id}/"}

        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            code, body, headers = submit()
            return Response(body, status=code, headers=headers)
        if not 1 <= len(key) <= 255:
            raise ValidationError({IDEMPOTENCY_HEADER: ["Must be 1 to 255 characters."]})
        stored = kernel.idempotent_execute(
            scope=str(principal.organization_id),
            key=key,
            fingerprint=kernel.request_fingerprint(request.data),
            operation=submit,
        )
        headers = {**stored.headers, "Idempotent-Replayed": "true" if stored.replayed else "false"}
        return Response(stored.body, status=stored.status, headers=headers)

    @extend_schema(
        operation_id="ai_tasks_list",
        parameters=[TaskListQuerySerializer],
        responses={200: TaskPageSerializer, 400: ERROR},
    )
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        query = TaskListQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        params = query.validated_data
        page = services.task_list(
            organization_id=principal.organization_id,
            status=params.get("status"),
            cursor=params.get("cursor"),
            limit=params["limit"],
        )
        next_url = None
        if page.next_cursor:
            args = {
                k: v
                for k, v in {
                    "status": params.get("status"),
                    "limit": params["limit"],
                    "cursor": page.next_cursor,
                }.items()
                if v
            }
            next_url = f"{request.path}?{urlencode(args)}"
        body = {"results": [_task_body(t) for t in page.results], "next_cursor": page.next_cursor, "next": next_url}
        return Response(body)


class AITaskDetailApi(APIView):
    query_budget = 4

    @extend_schema(operation_id="ai_tasks_retrieve", responses={200: TaskOutputSerializer, 404: ERROR})
    def get(self, request: Request, task_id: UUID) -> Response:
        task = services.task_get(organization_id=principal_of(request).organization_id, task_id=task_id)
        return Response(_task_body(task))


class AITaskCancelApi(APIView):
    query_budget = 12

    @extend_schema(
        operation_id="ai_tasks_cancel", request=None, responses={200: TaskOutputSerializer, 404: ERROR, 409: ERROR}
    )
    def post(self, request: Request, task_id: UUID) -> Response:
        task = services.task_cancel(organization_id=principal_of(request).organization_id, task_id=task_id)
        return Response(_task_body(task))
