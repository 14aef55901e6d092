"""Admin screens of the chat context render (lists with filters, a conversation with its turns)."""

from __future__ import annotations

import uuid

import pytest
from django.test import Client

from chat.models import Assistant, Conversation, Turn
from users.models import User

pytestmark = pytest.mark.django_db


def test_assistant_and_conversation_screens_render(tenant) -> None:
    client = Client()
    client.force_login(User.objects.create_superuser("ops@switchyard.test", "pw"))
    org = uuid.UUID(tenant.organization_id)
    assistant = Assistant.objects.create(organization_id=org, name="Bot", model="fake-small")
    conversation = Conversation.objects.create(organization_id=org, assistant=assistant, model="fake-small")
    Turn.objects.create(conversation=conversation, task_id=uuid.uuid4(), content="hello", reply="hi", status="done")
    assert client.get("/admin/chat/assistant/?model=fake-small").status_code == 200
    assert client.get(f"/admin/chat/assistant/{assistant.id}/change/").status_code == 200
    assert client.get("/admin/chat/conversation/?priority__exact=high").status_code == 200
    page = client.get(f"/admin/chat/conversation/{conversation.id}/change/")
    assert page.status_code == 200
    assert b"hello" in page.content
