"""The hot queries use their composite indexes (EXPLAIN on analysed tables, the planner
left alone): an assistant's recent conversations and a conversation's turns in order."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from chat.models import Assistant, Conversation, Turn

pytestmark = pytest.mark.django_db

ASSISTANTS, PER_ASSISTANT, TURNS_PER_CONVERSATION, WITH_TURNS = 50, 100, 20, 500


def _explain(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN {sql}")
        return "\n".join(row[0] for row in cursor.fetchall())


def _query_on(captured: CaptureQueriesContext, table: str) -> str:
    (sql,) = [q["sql"] for q in captured.captured_queries if f'FROM "{table}"' in q["sql"] and "ORDER BY" in q["sql"]]
    return sql


@pytest.fixture
def seeded(tenant):
    org = uuid.UUID(tenant.organization_id)
    assistants = Assistant.objects.bulk_create(
        Assistant(organization_id=org, name=f"a{n}", model="fake-small") for n in range(ASSISTANTS)
    )
    conversations = Conversation.objects.bulk_create(
        Conversation(organization_id=org, assistant=assistant, model="fake-small")
        for assistant in assistants
        for _ in range(PER_ASSISTANT)
    )
    Turn.objects.bulk_create(
        Turn(conversation=conversation, task_id=uuid.uuid4(), content="hello", reply="hi", status="done")
        for conversation in conversations[:WITH_TURNS]
        for _ in range(TURNS_PER_CONVERSATION)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE chat_assistant")
        cursor.execute("ANALYZE chat_conversation")
        cursor.execute("ANALYZE chat_turn")
    return tenant, assistants, conversations


def test_recent_conversations_of_an_assistant_use_the_composite_index(seeded) -> None:
    tenant, assistants, _ = seeded
    assert Conversation.objects.count() == ASSISTANTS * PER_ASSISTANT
    with CaptureQueriesContext(connection) as captured:
        response = tenant.client.get(f"/api/v1/assistants/{assistants[7].id}/conversations/?limit=20")
    assert response.status_code == 200 and len(response.json()["results"]) == 20
    plan = _explain(_query_on(captured, "chat_conversation"))
    assert "conversation_assistant_recent" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert "Sort" not in plan.split("Index")[0], plan  # rows come in index order, no sort above


def test_turns_of_a_conversation_in_order_use_the_composite_index(seeded) -> None:
    tenant, _, conversations = seeded
    assert Turn.objects.count() == WITH_TURNS * TURNS_PER_CONVERSATION
    with CaptureQueriesContext(connection) as captured:
        response = tenant.client.get(f"/api/v1/conversations/{conversations[3].id}/")
    assert len(response.json()["turns"]) == TURNS_PER_CONVERSATION
    plan = _explain(_query_on(captured, "chat_turn"))
    assert "turn_conversation_created" in plan, plan
    assert "Seq Scan" not in plan, plan
