"""Request validation and response shapes of the AI task API (SPEC §4)."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from kernel.serializers import QuerySerializer
from llm import services

METADATA_MAX_BYTES = 4096


class TaskSubmitInputSerializer(serializers.Serializer[dict[str, Any]]):
    prompt = serializers.CharField(min_length=5, max_length=4000, trim_whitespace=True)
    model = serializers.CharField(required=False, max_length=100)
    priority = serializers.ChoiceField(choices=["high", "normal", "low"], default="normal")
    max_tokens = serializers.IntegerField(min_value=1, max_value=8192, default=1024)
    metadata = serializers.DictField(required=False, default=dict)
    callback_url = serializers.URLField(required=False, allow_null=True, max_length=2000)
    cache = serializers.BooleanField(default=True)

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, separators=(",", ":")).encode()) > METADATA_MAX_BYTES:
            raise serializers.ValidationError(f"metadata must be at most {METADATA_MAX_BYTES} bytes as JSON.")
        return value

    def validate_callback_url(self, value: str | None) -> str | None:
        problem = services.callback_url_problem(value) if value is not None else None
        if problem:
            raise serializers.ValidationError(problem)
        return value


class TaskOutputSerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["pending", "processing", "done", "failed", "cancelled"])
    priority = serializers.ChoiceField(choices=["high", "normal", "low"])
    model = serializers.CharField()
    served_model = serializers.CharField(help_text="The model of the current attempt; once done, the one that answered")
    result = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    cached = serializers.BooleanField()
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    cost_usd = serializers.DecimalField(max_digits=20, decimal_places=10, coerce_to_string=True)
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    duration_seconds = serializers.FloatField(allow_null=True)
    metadata = serializers.DictField()


class TaskListQuerySerializer(QuerySerializer):
    """Query parameters of the task list (an empty value is a 400: kernel.serializers)."""

    status = serializers.ChoiceField(choices=["pending", "processing", "done", "failed", "cancelled"], required=False)
    cursor = serializers.CharField(required=False, max_length=200)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=20)


class TaskPageSerializer(serializers.Serializer[dict[str, Any]]):
    results = TaskOutputSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True)
    next = serializers.CharField(allow_null=True)
