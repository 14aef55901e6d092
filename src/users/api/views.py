"""Identity endpoints."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from kernel.auth import principal_of


class MeApi(APIView):
    """Who the presented API key belongs to."""

    class OutputSerializer(serializers.Serializer[dict[str, object]]):
        organization_id = serializers.UUIDField()
        organization_name = serializers.CharField()
        api_key_id = serializers.UUIDField()

    query_budget = 3

    @extend_schema(responses=OutputSerializer, operation_id="me_retrieve")
    def get(self, request: Request) -> Response:
        principal = principal_of(request)
        return Response(self.OutputSerializer(principal.model_dump()).data)
