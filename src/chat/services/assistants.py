"""Assistants: a chatbot a product team configures (SPEC §4), scoped to its organization."""

from __future__ import annotations

from uuid import UUID

from django.db import transaction

from billing import services as billing
from chat import selectors
from chat.models import Assistant
from chat.services._common import AssistantNotFound, InvalidAssistant, to_assistant
from contracts.chat import Assistant as AssistantContract
from contracts.chat import AssistantInput, AssistantPage

MAX_FALLBACKS = 4


def check_models(model: str, fallbacks: list[str]) -> None:
    """Every model must be in the price catalog (a fallback is charged at its own price)."""
    if len(fallbacks) > MAX_FALLBACKS:
        raise InvalidAssistant(f"At most {MAX_FALLBACKS} fallback models.")
    if model in fallbacks or len(set(fallbacks)) != len(fallbacks):
        raise InvalidAssistant("Fallback models must differ from the model and from each other.")
    for name in (model, *fallbacks):
        try:
            billing.price_current(model=name)
        except billing.UnknownModel as exc:
            raise InvalidAssistant(f"Model {name!r} is not in the price catalog.") from exc


def assistant_create(*, organization_id: UUID, data: AssistantInput, default_model: str) -> AssistantContract:
    fields = data.model_dump(exclude_none=True)
    fields.setdefault("model", default_model)
    if not fields.get("name"):
        raise InvalidAssistant("An assistant needs a name.")
    check_models(fields["model"], fields.get("fallback_models", []))
    row = Assistant.objects.create(organization_id=organization_id, **fields)
    return to_assistant(row)


def assistant_get(*, organization_id: UUID, assistant_id: UUID) -> AssistantContract:
    row = selectors.assistant_find(organization_id=organization_id, assistant_id=assistant_id)
    if row is None:
        raise AssistantNotFound()
    return to_assistant(row)


def assistant_list(*, organization_id: UUID, cursor: str | None, limit: int) -> AssistantPage:
    rows, next_cursor = selectors.assistant_page(organization_id=organization_id, cursor=cursor, limit=limit)
    return AssistantPage(results=[to_assistant(row) for row in rows], next_cursor=next_cursor)


def assistant_update(*, organization_id: UUID, assistant_id: UUID, data: AssistantInput) -> AssistantContract:
    """Change the given fields. Conversations already started keep the settings they began with."""
    with transaction.atomic():
        row = (
            selectors.assistant_queryset(organization_id=organization_id)
            .select_for_update()
            .filter(id=assistant_id)
            .first()
        )
        if row is None:
            raise AssistantNotFound()
        fields = data.model_dump(exclude_none=True)
        if "name" in fields and not fields["name"]:
            raise InvalidAssistant("An assistant needs a name.")
        for name, value in fields.items():
            setattr(row, name, value)
        check_models(row.model, list(row.fallback_models))
        row.save()
    return to_assistant(row)


def assistant_delete(*, organization_id: UUID, assistant_id: UUID) -> None:
    """Delete the assistant; its conversations stay (with the settings they began with)."""
    deleted, _ = selectors.assistant_queryset(organization_id=organization_id).filter(id=assistant_id).delete()
    if not deleted:
        raise AssistantNotFound()
