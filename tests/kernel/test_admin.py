"""The event dead-letter admin: the list and its filters select the letters, rows stay
read-only on POST and cannot be deleted (replay is covered in test_event_dead_letter)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from kernel.models import EventDeadLetter
from tests.factories import EventDeadLetterFactory

pytestmark = pytest.mark.django_db


def rows(response: Any) -> list[Any]:
    assert response.status_code == 200
    return list(response.context["cl"].result_list)


def test_filters_select_the_letters_by_type_handler_and_replay(admin_client: Client) -> None:
    finished = EventDeadLetterFactory.create()
    other = EventDeadLetterFactory.create(event_type="billing.usage_recorded", handler="analytics.handlers.other")
    replayed = EventDeadLetterFactory.create(replayed_at=timezone.now())
    changelist = admin_client.get("/admin/kernel/eventdeadletter/")
    assert {letter.pk for letter in rows(changelist)} == {finished.pk, other.pk, replayed.pk}
    assert {spec.field_path for spec in changelist.context["cl"].filter_specs} == {
        "event_type",
        "handler",
        "replayed_at",
    }
    by_type = rows(admin_client.get("/admin/kernel/eventdeadletter/?event_type=billing.usage_recorded"))
    assert [letter.pk for letter in by_type] == [other.pk]
    by_handler = rows(admin_client.get("/admin/kernel/eventdeadletter/?handler=analytics.handlers.other"))
    assert [letter.pk for letter in by_handler] == [other.pk]
    waiting = rows(admin_client.get("/admin/kernel/eventdeadletter/?replayed_at__isnull=True"))
    assert {letter.pk for letter in waiting} == {finished.pk, other.pk}
    found = rows(admin_client.get(f"/admin/kernel/eventdeadletter/?q={other.event_id}"))
    assert [letter.pk for letter in found] == [other.pk]


def test_a_letter_is_read_only_on_post_and_cannot_be_deleted(admin_client: Client) -> None:
    letter = EventDeadLetterFactory.create()
    url = f"/admin/kernel/eventdeadletter/{letter.pk}/change/"
    page = admin_client.get(url).content.decode()
    for field in ("event_type", "handler", "payload", "error", "attempts"):
        assert f'name="{field}"' not in page
    admin_client.post(url, {"event_type": "forged", "handler": "forged", "payload": "{}", "attempts": "0"})
    after = EventDeadLetter.objects.get(pk=letter.pk)
    assert (after.event_type, after.handler, after.payload, after.attempts) == (
        letter.event_type,
        letter.handler,
        letter.payload,
        letter.attempts,
    )
    assert admin_client.post(f"/admin/kernel/eventdeadletter/{letter.pk}/delete/", {"post": "yes"}).status_code == 403
    assert EventDeadLetter.objects.filter(pk=letter.pk).exists()
