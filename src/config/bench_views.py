"""Benchmark-only baselines, mounted under /bench/ only when BENCH_VIEWS=true (bench/).

Served by the same web server as the platform in the same run, so the ratios the
benchmark prints compare code paths, not machines:

- ``floor``: what any submit endpoint must do at least: validate the same body with
  the same DRF serializer, insert one row into the task table, publish one message.
  No authentication, throttle, budget or idempotency. The row is written already
  ``cancelled`` and the message goes to a queue no worker consumes (``bench-floor``,
  purged by the harness), so the pools and the sweeper never see either.
- ``naive``: the shape the platform replaces: call the (fake) provider inline and
  answer when it is done.

They live in ``config`` (the wiring layer) and reach the task model through the app
registry, not by importing ``llm.models``.
"""

from __future__ import annotations

import uuid
from typing import Any

from celery import current_app
from django.apps import apps
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from llm.api.serializers import TaskSubmitInputSerializer
from llm.providers import CompletionRequest, Message, get_provider

FLOOR_QUEUE = "bench-floor"
FLOOR_TASK = "bench.floor"

_organization_id: uuid.UUID | None = None


def _bench_organization() -> uuid.UUID:
    """The organization the floor rows belong to: the first one, looked up once per process."""
    global _organization_id
    if _organization_id is None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT id FROM users_organization ORDER BY created_at LIMIT 1")
            row = cursor.fetchone()
        if row is None:
            raise RuntimeError("the floor view needs one organization (bench/ creates it)")
        _organization_id = row[0]
    return _organization_id


class _Open(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []


class FloorSubmitApi(_Open):
    query_budget = 4

    def post(self, request: Request) -> Response:
        serializer = TaskSubmitInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        task_model = apps.get_model("llm", "AITask")
        now = timezone.now()
        with transaction.atomic():
            task = task_model.objects.create(
                organization_id=_bench_organization(),
                prompt=data["prompt"],
                model=data.get("model") or settings.LLM_DEFAULT_MODEL,
                priority=data["priority"],
                max_tokens=data["max_tokens"],
                metadata=data["metadata"],
                use_cache=data["cache"],
                status="cancelled",
                completed_at=now,
            )
            transaction.on_commit(
                lambda: current_app.send_task(FLOOR_TASK, args=[str(task.pk)], task_id=str(task.pk), queue=FLOOR_QUEUE)
            )
        return Response({"id": str(task.pk), "status": "pending"}, status=202)


class NaiveSubmitApi(_Open):
    query_budget = 1

    def post(self, request: Request) -> Response:
        serializer = TaskSubmitInputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        completion = get_provider().complete(
            CompletionRequest(
                model=data.get("model") or settings.LLM_DEFAULT_MODEL,
                messages=(Message(role="user", content=data["prompt"]),),
                max_tokens=data["max_tokens"],
            )
        )
        return Response({"status": "done", "result": completion.text}, status=200)
