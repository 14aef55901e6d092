"""Serializers of the chat API (SPEC §4): input validation and the output shape, nothing more."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import serializers

from kernel.serializers import QuerySerializer
from llm import services as llm

METADATA_MAX_BYTES = 4096
PRIORITIES = ["high", "normal", "low"]


def _small_json(value: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(value, separators=(",", ":")).encode()) > METADATA_MAX_BYTES:
        raise serializers.ValidationError(f"metadata must be at most {METADATA_MAX_BYTES} bytes as JSON.")
    return value


class AssistantInputSerializer(serializers.Serializer[dict[str, Any]]):
    name = serializers.CharField(max_length=200, trim_whitespace=True)
    system_prompt = serializers.CharField(max_length=20_000, required=False, allow_blank=True, trim_whitespace=False)
    model = serializers.CharField(max_length=100, required=False)
    fallback_models = serializers.ListField(child=serializers.CharField(max_length=100), required=False, max_length=4)
    default_priority = serializers.ChoiceField(choices=PRIORITIES, required=False)
    context_token_budget = serializers.IntegerField(min_value=64, max_value=200_000, required=False)
    max_tokens = serializers.IntegerField(min_value=1, max_value=8192, required=False)
    metadata = serializers.DictField(required=False)

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        return _small_json(value)


class AssistantOutputSerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.UUIDField()
    name = serializers.CharField()
    system_prompt = serializers.CharField()
    model = serializers.CharField()
    fallback_models = serializers.ListField(child=serializers.CharField())
    default_priority = serializers.ChoiceField(choices=PRIORITIES)
    context_token_budget = serializers.IntegerField()
    max_tokens = serializers.IntegerField()
    metadata = serializers.DictField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class PageQuerySerializer(QuerySerializer):
    cursor = serializers.CharField(required=False, max_length=200)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, default=20)


class AssistantPageSerializer(serializers.Serializer[dict[str, Any]]):
    results = AssistantOutputSerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True)
    next = serializers.CharField(allow_null=True)


class ConversationInputSerializer(serializers.Serializer[dict[str, Any]]):
    assistant_id = serializers.UUIDField(required=False)
    system_prompt = serializers.CharField(max_length=20_000, required=False, allow_blank=True, trim_whitespace=False)
    model = serializers.CharField(max_length=100, required=False)
    title = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    metadata = serializers.DictField(required=False, default=dict)

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        return _small_json(value)


class ConversationSummarySerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.UUIDField()
    assistant_id = serializers.UUIDField(allow_null=True)
    title = serializers.CharField()
    model = serializers.CharField()
    fallback_models = serializers.ListField(child=serializers.CharField())
    priority = serializers.ChoiceField(choices=PRIORITIES)
    context_token_budget = serializers.IntegerField()
    turn_count = serializers.IntegerField()
    active_turn_id = serializers.UUIDField(allow_null=True)
    metadata = serializers.DictField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


class ConversationPageSerializer(serializers.Serializer[dict[str, Any]]):
    results = ConversationSummarySerializer(many=True)
    next_cursor = serializers.CharField(allow_null=True)
    next = serializers.CharField(allow_null=True)


class TurnSerializer(serializers.Serializer[dict[str, Any]]):
    id = serializers.UUIDField()
    task_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["running", "done", "failed", "cancelled"])
    content = serializers.CharField()
    reply = serializers.CharField(allow_null=True)
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)


class ConversationOutputSerializer(ConversationSummarySerializer):
    system_prompt = serializers.CharField()
    turns = TurnSerializer(many=True)


class MessageInputSerializer(serializers.Serializer[dict[str, Any]]):
    content = serializers.CharField(min_length=1, max_length=4000, trim_whitespace=True)
    callback_url = serializers.URLField(required=False, allow_null=True, max_length=2000)
    metadata = serializers.DictField(required=False, default=dict)

    def validate_metadata(self, value: dict[str, Any]) -> dict[str, Any]:
        return _small_json(value)

    def validate_callback_url(self, value: str | None) -> str | None:
        problem = llm.callback_url_problem(value) if value is not None else None  # the AI task rules
        if problem:
            raise serializers.ValidationError(problem)
        return value


class TurnTaskSerializer(serializers.Serializer[dict[str, Any]]):
    """The turn's AI task, as ``GET /api/v1/ai-tasks/{id}/`` shows it."""

    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["pending", "processing", "done", "failed", "cancelled"])
    priority = serializers.ChoiceField(choices=PRIORITIES)
    model = serializers.CharField()
    served_model = serializers.CharField()
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


class TurnAcceptedSerializer(serializers.Serializer[dict[str, Any]]):
    turn = TurnSerializer()
    task = TurnTaskSerializer()
