"""kernel.db.insert_row: the submit path's INSERT, built once per model, stores exactly
what ``Model.objects.create`` stores."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import IntegrityError, connection
from django.forms.models import model_to_dict
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from kernel.db import insert_row
from llm.models import AITask
from tests.factories import OrganizationFactory

pytestmark = pytest.mark.django_db


def fields(**extra: object) -> dict[str, object]:
    return {
        "organization_id": OrganizationFactory.create().id,
        "api_key_id": uuid.uuid4(),
        "prompt": "Explain the outbox pattern, NUL-free: ünïcode ✓",
        "model": "fake-small",
        "max_tokens": 256,
        "metadata": {"nested": {"list": [1, 2.5, None, "x"]}},
        "messages": [{"role": "user", "content": "hi"}],
        "fallback_models": ["fake-large"],
        **extra,
    }


def stored(task_id: uuid.UUID) -> dict[str, object]:
    row = AITask.objects.get(id=task_id)
    values = model_to_dict(row, exclude=["id", "organization", "created_at", "updated_at"])
    values.pop("organization_id", None)
    return values


def test_a_row_inserted_once_per_statement_reads_back_like_create() -> None:
    before = timezone.now()
    common = fields(dispatched_at=before, dispatch_count=1)
    created = AITask.objects.create(id=uuid.uuid4(), **common)
    inserted = AITask(id=uuid.uuid4(), **common)
    with CaptureQueriesContext(connection) as queries:
        insert_row(inserted)
    assert len(queries.captured_queries) == 1
    assert queries.captured_queries[0]["sql"].startswith('INSERT INTO "llm_aitask"')
    assert stored(inserted.id) == stored(created.id)  # defaults, JSON, decimals alike
    row = AITask.objects.get(id=inserted.id)
    assert before <= row.created_at <= timezone.now() + timedelta(seconds=1)  # auto_now_add applied
    assert row.created_at == inserted.created_at and row.status == "pending" and row.webhook_status == "none"
    assert not inserted._state.adding


def test_a_duplicate_key_is_an_integrity_error_like_create() -> None:
    task = AITask(id=uuid.uuid4(), **fields())
    insert_row(task)
    with pytest.raises(IntegrityError):
        insert_row(AITask(id=task.id, **fields()))
