"""AI task HTTP API without workers: validation, 202 + Location, scoping, pagination,
query budgets, cancel, idempotency and the response cache."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from llm.models import AITask

pytestmark = pytest.mark.django_db
PROMPT = "Explain queues to a five year old."


def submit(tenant, **body):
    return tenant.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT, **body}, format="json")


def test_submit_answers_202_with_location_and_pending_task(tenant) -> None:
    response = submit(tenant, priority="high", max_tokens=64, metadata={"ticket": 7})
    assert response.status_code == 202
    body = response.json()
    assert response["Location"] == f"/api/v1/ai-tasks/{body['id']}/"
    assert body["status"] == "pending"
    assert body["priority"] == "high"
    assert body["model"] == "fake-small"
    assert body["metadata"] == {"ticket": 7}
    assert body["cached"] is False
    assert Decimal(body["cost_usd"]) == 0
    task = AITask.objects.get(id=body["id"])
    assert str(task.organization_id) == tenant.organization_id
    assert task.reservation_id is not None


@pytest.mark.parametrize(
    ("body", "attr"),
    [
        ({"prompt": "hi"}, "prompt"),
        ({"prompt": "   hi   "}, "prompt"),
        ({"prompt": "x" * 4001}, "prompt"),
        ({"prompt": PROMPT, "priority": "urgent"}, "priority"),
        ({"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
        ({"prompt": PROMPT, "max_tokens": 8193}, "max_tokens"),
        ({"prompt": PROMPT, "metadata": {"blob": "x" * 5000}}, "metadata"),
        ({"prompt": PROMPT, "metadata": ["not", "an", "object"]}, "metadata"),
        ({"prompt": PROMPT, "callback_url": "ftp://example.com/x"}, "callback_url"),
        ({"prompt": PROMPT, "callback_url": "http://127.0.0.1:9/hook"}, "callback_url"),
        ({"prompt": PROMPT, "callback_url": "http://10.0.0.8/hook"}, "callback_url"),
        ({}, "prompt"),
    ],
)
def test_invalid_submissions_are_400_naming_the_field(tenant, body, attr) -> None:
    response = tenant.client.post("/api/v1/ai-tasks/", body, format="json")
    assert response.status_code == 400
    payload = response.json()
    assert payload["type"] == "validation_error"
    assert attr in [error["attr"] for error in payload["errors"]]
    assert AITask.objects.count() == 0


def test_unknown_model_is_400(tenant) -> None:
    response = submit(tenant, model="gpt-17-ultra")
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_model"


def test_non_json_body_is_415(tenant) -> None:
    response = tenant.client.post("/api/v1/ai-tasks/", "prompt=hello world", content_type="text/plain")
    assert response.status_code == 415


def test_over_budget_is_402_and_creates_nothing(tenant) -> None:
    from billing import services as billing

    billing.budget_set(organization_id=uuid.UUID(tenant.organization_id), limit_usd=Decimal("0"))
    response = submit(tenant)
    assert response.status_code == 402
    body = response.json()
    assert body["code"] == "budget_exhausted"
    assert Decimal(body["remaining_usd"]) == 0
    assert AITask.objects.count() == 0


def test_detail_is_scoped_to_the_organization(make_tenant) -> None:
    alice, bob = make_tenant(), make_tenant()
    task_id = submit(alice).json()["id"]
    assert alice.client.get(f"/api/v1/ai-tasks/{task_id}/").status_code == 200
    for path in (f"/api/v1/ai-tasks/{task_id}/", f"/api/v1/ai-tasks/{uuid.uuid4()}/"):
        response = bob.client.get(path)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    assert bob.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/").status_code == 404
    assert AITask.objects.get(id=task_id).status == "pending"


def test_list_is_newest_first_cursor_paginated_and_filtered(make_tenant) -> None:
    alice, bob = make_tenant(), make_tenant()
    ids = [submit(alice, max_tokens=10 + i).json()["id"] for i in range(5)]
    submit(bob)
    tenant_client = alice.client
    first = tenant_client.get("/api/v1/ai-tasks/?limit=2").json()
    assert [t["id"] for t in first["results"]] == ids[::-1][:2]
    second = tenant_client.get(f"/api/v1/ai-tasks/?limit=2&cursor={first['next_cursor']}").json()
    third = tenant_client.get(second["next"]).json()
    seen = [t["id"] for page in (first, second, third) for t in page["results"]]
    assert seen == ids[::-1]
    assert third["next_cursor"] is None
    tenant_client.post(f"/api/v1/ai-tasks/{ids[0]}/cancel/")
    cancelled = tenant_client.get("/api/v1/ai-tasks/?status=cancelled").json()["results"]
    assert [t["id"] for t in cancelled] == [ids[0]]


@pytest.mark.parametrize("query", ["status=bogus", "limit=0", "limit=101", "cursor=not-a-cursor"])
def test_list_rejects_bad_parameters(tenant, query) -> None:
    assert tenant.client.get(f"/api/v1/ai-tasks/?{query}").status_code == 400


@pytest.mark.parametrize("rows", [1, 25])
def test_list_and_detail_query_count_does_not_grow(tenant, rows, django_assert_num_queries) -> None:
    ids = [submit(tenant).json()["id"] for _ in range(rows)]
    tenant.client.get("/api/v1/me/")  # last_used_at is written at most once a minute; settle it first
    with django_assert_num_queries(2):  # key lookup + one page query
        assert len(tenant.client.get("/api/v1/ai-tasks/?limit=100").json()["results"]) == rows
    with django_assert_num_queries(2):
        tenant.client.get(f"/api/v1/ai-tasks/{ids[-1]}/")


def test_cancel_pending_then_409_and_budget_released(tenant) -> None:
    from billing import services as billing

    org = uuid.UUID(tenant.organization_id)
    task_id = submit(tenant, max_tokens=4000).json()["id"]
    assert billing.budget_status(organization_id=org).reserved_usd > 0
    response = tenant.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert billing.budget_status(organization_id=org).reserved_usd == 0
    again = tenant.client.post(f"/api/v1/ai-tasks/{task_id}/cancel/")
    assert again.status_code == 409
    assert again.json()["code"] == "task_not_cancellable"


def test_idempotency_key_replays_conflicts_and_mismatches(tenant, make_tenant) -> None:
    headers = {"HTTP_IDEMPOTENCY_KEY": "order-42"}
    first = tenant.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT}, format="json", **headers)
    replay = tenant.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT}, format="json", **headers)
    assert first.status_code == replay.status_code == 202
    assert first.json()["id"] == replay.json()["id"]
    assert replay["Location"] == first["Location"]
    assert replay["Idempotent-Replayed"] == "true"
    other = tenant.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT + "!"}, format="json", **headers)
    assert other.status_code == 422
    assert AITask.objects.count() == 1
    # The key is scoped to the organization: another tenant may use the same key.
    stranger = make_tenant()
    assert stranger.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT}, format="json", **headers).status_code == 202
    too_long = tenant.client.post(
        "/api/v1/ai-tasks/", {"prompt": PROMPT}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 256
    )
    assert too_long.status_code == 400


def test_idempotency_key_in_flight_is_409(tenant) -> None:
    from kernel.models import IdempotencyRecord
    from kernel.services import request_fingerprint

    # The first request with this key and this body is still being processed.
    IdempotencyRecord.objects.create(
        scope=tenant.organization_id, key="busy", fingerprint=request_fingerprint({"prompt": PROMPT})
    )
    response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT}, format="json", HTTP_IDEMPOTENCY_KEY="busy")
    assert response.status_code == 409
    assert response.json()["code"] == "idempotency_in_flight"
    assert AITask.objects.count() == 0


def test_failed_submission_frees_the_idempotency_key(tenant) -> None:
    from billing import services as billing

    org = uuid.UUID(tenant.organization_id)
    billing.budget_set(organization_id=org, limit_usd=Decimal("0"))
    headers = {"HTTP_IDEMPOTENCY_KEY": "retry-me"}
    assert tenant.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT}, format="json", **headers).status_code == 402
    billing.budget_set(organization_id=org, limit_usd=Decimal("10"))
    assert tenant.client.post("/api/v1/ai-tasks/", {"prompt": PROMPT}, format="json", **headers).status_code == 202
