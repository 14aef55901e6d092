"""Views of the chat API (SPEC §4): validate, make one service call, serialize. Errors
are exceptions from the services, mapped once by ``kernel.errors``."""

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

from chat import services
from chat.api import serializers as s
from contracts.chat import AssistantInput, ConversationStart, TurnPost
from kernel import services as kernel
from kernel.auth import principal_of

IDEMPOTENCY_HEADER = "Idempotency-Key"
ERROR = OpenApiResponse(description="Error: {type, code, detail, errors?}")


def _page_query(request: Request) -> dict[str, Any]:
    query = s.PageQuerySerializer(data=request.query_params)
    query.is_valid(raise_exception=True)
    return dict(query.validated_data)


def _next(request: Request, params: dict[str, Any], cursor: str | None) -> str | None:
    if not cursor:
        return None
    return f"{request.path}?{urlencode({'limit': params['limit'], 'cursor': cursor})}"


def _assistant_input(request: Request, *, partial: bool) -> AssistantInput:
    serializer = s.AssistantInputSerializer(data=request.data, partial=partial)
    serializer.is_valid(raise_exception=True)
    return AssistantInput(**serializer.validated_data)


class AssistantListCreateApi(APIView):
    query_budget = 6

    @extend_schema(
        operation_id="assistants_create",
        request=s.AssistantInputSerializer,
        responses={201: s.AssistantOutputSerializer, 400: ERROR},
    )
    def post(self, request: Request) -> Response:
        assistant = services.assistant_create(
            organization_id=principal_of(request).organization_id,
            data=_assistant_input(request, partial=False),
            default_model=settings.LLM_DEFAULT_MODEL,
        )
        body = s.AssistantOutputSerializer(assistant.model_dump()).data
        return Response(
            body, status=status.HTTP_201_CREATED, headers={"Location": f"/api/v1/assistants/{assistant.id}/"}
        )

    @extend_schema(
        operation_id="assistants_list", parameters=[s.PageQuerySerializer], responses={200: s.AssistantPageSerializer}
    )
    def get(self, request: Request) -> Response:
        params = _page_query(request)
        page = services.assistant_list(
            organization_id=principal_of(request).organization_id, cursor=params.get("cursor"), limit=params["limit"]
        )
        results = [s.AssistantOutputSerializer(a.model_dump()).data for a in page.results]
        return Response(
            {"results": results, "next_cursor": page.next_cursor, "next": _next(request, params, page.next_cursor)}
        )


class AssistantDetailApi(APIView):
    query_budget = 6

    @extend_schema(operation_id="assistants_retrieve", responses={200: s.AssistantOutputSerializer, 404: ERROR})
    def get(self, request: Request, assistant_id: UUID) -> Response:
        assistant = services.assistant_get(
            organization_id=principal_of(request).organization_id, assistant_id=assistant_id
        )
        return Response(s.AssistantOutputSerializer(assistant.model_dump()).data)

    @extend_schema(
        operation_id="assistants_partial_update",
        request=s.AssistantInputSerializer,
        responses={200: s.AssistantOutputSerializer, 400: ERROR, 404: ERROR},
    )
    def patch(self, request: Request, assistant_id: UUID) -> Response:
        assistant = services.assistant_update(
            organization_id=principal_of(request).organization_id,
            assistant_id=assistant_id,
            data=_assistant_input(request, partial=True),
        )
        return Response(s.AssistantOutputSerializer(assistant.model_dump()).data)

    @extend_schema(operation_id="assistants_destroy", responses={204: None, 404: ERROR})
    def delete(self, request: Request, assistant_id: UUID) -> Response:
        services.assistant_delete(organization_id=principal_of(request).organization_id, assistant_id=assistant_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _conversation_page(request: Request, assistant_id: UUID | None) -> Response:
    params = _page_query(request)
    page = services.conversation_list(
        organization_id=principal_of(request).organization_id,
        assistant_id=assistant_id,
        cursor=params.get("cursor"),
        limit=params["limit"],
    )
    results = [s.ConversationSummarySerializer(c.model_dump()).data for c in page.results]
    return Response(
        {"results": results, "next_cursor": page.next_cursor, "next": _next(request, params, page.next_cursor)}
    )


class AssistantConversationsApi(APIView):
    query_budget = 4

    @extend_schema(
        operation_id="assistants_conversations_list",
        parameters=[s.PageQuerySerializer],
        responses={200: s.ConversationPageSerializer, 400: ERROR, 404: ERROR},
    )
    def get(self, request: Request, assistant_id: UUID) -> Response:
        return _conversation_page(request, assistant_id)


class ConversationListCreateApi(APIView):
    query_budget = 6

    @extend_schema(
        operation_id="conversations_create",
        request=s.ConversationInputSerializer,
        responses={201: s.ConversationSummarySerializer, 400: ERROR, 404: ERROR},
    )
    def post(self, request: Request) -> Response:
        serializer = s.ConversationInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        conversation = services.conversation_start(
            ConversationStart(organization_id=principal_of(request).organization_id, **serializer.validated_data)
        )
        body = s.ConversationSummarySerializer(conversation.model_dump()).data
        headers = {"Location": f"/api/v1/conversations/{conversation.id}/"}
        return Response(body, status=status.HTTP_201_CREATED, headers=headers)

    @extend_schema(
        operation_id="conversations_list",
        parameters=[s.PageQuerySerializer],
        responses={200: s.ConversationPageSerializer, 400: ERROR},
    )
    def get(self, request: Request) -> Response:
        return _conversation_page(request, None)


class ConversationDetailApi(APIView):
    query_budget = 5

    @extend_schema(operation_id="conversations_retrieve", responses={200: s.ConversationOutputSerializer, 404: ERROR})
    def get(self, request: Request, conversation_id: UUID) -> Response:
        conversation = services.conversation_get(
            organization_id=principal_of(request).organization_id, conversation_id=conversation_id
        )
        return Response(s.ConversationOutputSerializer(conversation.model_dump()).data)


class ConversationMessagesApi(APIView):
    # The AI task submit (its budget rows, the gate) plus the turn's lock, context and row.
    query_budget = 28

    @extend_schema(
        operation_id="conversations_messages_create",
        request=s.MessageInputSerializer,
        parameters=[OpenApiParameter(IDEMPOTENCY_HEADER, str, OpenApiParameter.HEADER, required=False)],
        responses={
            202: s.TurnAcceptedSerializer,
            400: ERROR,
            402: ERROR,
            404: ERROR,
            409: ERROR,
            422: ERROR,
            429: ERROR,
        },
    )
    def post(self, request: Request, conversation_id: UUID) -> Response:
        principal = principal_of(request)
        serializer = s.MessageInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        post = TurnPost(
            organization_id=principal.organization_id,
            api_key_id=principal.api_key_id,
            conversation_id=conversation_id,
            content=data["content"],
            callback_url=data.get("callback_url"),
            metadata=data["metadata"],
            request_id=getattr(request, "request_id", None),
        )

        def accept() -> tuple[int, Any, dict[str, str]]:
            accepted = services.turn_post(post)
            body = s.TurnAcceptedSerializer(accepted.model_dump()).data
            return status.HTTP_202_ACCEPTED, body, {"Location": f"/api/v1/ai-tasks/{accepted.task.id}/"}

        key = request.headers.get(IDEMPOTENCY_HEADER)
        if key is None:
            code, body, headers = accept()
            return Response(body, status=code, headers=headers)
        if not 1 <= len(key) <= 255:
            raise ValidationError({IDEMPOTENCY_HEADER: ["Must be 1 to 255 characters."]})
        stored = kernel.idempotent_execute(
            scope=str(principal.organization_id),
            key=key,
            fingerprint=kernel.request_fingerprint({"conversation": str(conversation_id), "body": request.data}),
            operation=accept,
        )
        headers = {**stored.headers, "Idempotent-Replayed": "true" if stored.replayed else "false"}
        return Response(stored.body, status=stored.status, headers=headers)
