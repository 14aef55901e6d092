"""Serializer pieces every context's API shares.

``QuerySerializer`` is the base of every query-string serializer: DRF reads an empty form
value (``?status=``) as "absent" and applies the default, so a filter that silently matches
everything would pass. The contract has no empty query values, so they are refused (400).
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers


class QuerySerializer(serializers.Serializer[dict[str, Any]]):
    def to_internal_value(self, data: Any) -> dict[str, Any]:
        blank: dict[str, list[str]] = {
            str(name): ["This field may not be blank."] for name in self.fields if data.get(name) == ""
        }
        if blank:
            raise serializers.ValidationError(blank)
        return super().to_internal_value(data)
