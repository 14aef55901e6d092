"""The response cache: identical work in one organization is answered once.

The key covers organization, model, parameters and prompt, so one organization never
receives another's cached answer. For a conversation turn it covers the whole message
list (system prompt, every earlier turn and roles) and the fallback models, so an answer
is only reused for an identical conversation state. A cache outage is a miss, never an error.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from uuid import UUID

import structlog
from django.conf import settings
from django.core.cache import cache

from kernel import metrics

log = structlog.get_logger(__name__)
VERSION = 1


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    text: str
    input_tokens: int
    output_tokens: int


def cache_key(
    *,
    organization_id: UUID,
    model: str,
    max_tokens: int,
    prompt: str,
    messages: Sequence[Mapping[str, str]] | None = None,
) -> str:
    parts: list[object] = [str(organization_id), model, max_tokens, prompt]
    if messages is not None:  # a plain task keeps its old key
        parts.append([[m["role"], m["content"]] for m in messages])
    material = json.dumps(parts, separators=(",", ":"))
    return f"llm:response:v{VERSION}:{hashlib.sha256(material.encode()).hexdigest()}"


def get(key: str) -> CachedAnswer | None:
    try:
        value = cache.get(key)
    except Exception:
        log.warning("response_cache_unavailable", exc_info=True)
        metrics.CACHE_LOOKUPS.labels(result="error").inc()
        return None
    metrics.CACHE_LOOKUPS.labels(result="hit" if isinstance(value, dict) else "miss").inc()
    return CachedAnswer(**value) if isinstance(value, dict) else None


def put(key: str, answer: CachedAnswer) -> None:
    try:
        cache.set(key, asdict(answer), timeout=settings.RESPONSE_CACHE_TTL_S)
    except Exception:
        log.warning("response_cache_unavailable", exc_info=True)
