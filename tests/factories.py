"""Typed factory_boy factories for rows the tests would otherwise build field by field.

Rows whose invariants live in a service are created through it: an API key through
``users.services.api_key_create`` (digest, membership), a reservation through
``billing.services.budget_reserve`` (the budget's counters move with it), an AI task
with a real reservation for its estimate. Plain configuration rows (organizations,
dispatch policies, event dead letters) are created directly.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import factory
from django.utils import timezone
from factory.django import DjangoModelFactory

from billing import services as billing
from contracts.billing import Reservation, ReservationRequest
from contracts.users import ApiKeyIssued
from kernel.models import EventDeadLetter
from llm.models import AITask, DispatchPolicy
from llm.providers.tokens import estimate_tokens
from users import services as users
from users.models import Organization


class OrganizationFactory(DjangoModelFactory[Organization]):
    class Meta:
        model = Organization
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"Organization {n}")


class ApiKeyFactory(factory.Factory[ApiKeyIssued]):
    """An issued key (the raw key too) for a new user of ``organization_name``."""

    class Meta:
        model = ApiKeyIssued

    email = factory.Sequence(lambda n: f"user{n}@factory.test")
    organization_name = factory.Sequence(lambda n: f"Organization {n}")
    name = "default"

    @classmethod
    def _create(cls, model_class: type[ApiKeyIssued], *args: Any, **kwargs: Any) -> ApiKeyIssued:
        return users.api_key_create(**kwargs)

    _build = _create


class ReservationFactory(factory.Factory[Reservation]):
    """A held reservation, through billing (the budget's reserved counter moves)."""

    class Meta:
        model = ReservationRequest

    organization_id = factory.LazyFunction(lambda: OrganizationFactory.create().id)
    api_key_id = None
    task_id = factory.LazyFunction(uuid.uuid4)
    model = "fake-small"
    estimated_input_tokens = 1000
    max_output_tokens = 1000

    @classmethod
    def _create(cls, model_class: type[ReservationRequest], *args: Any, **kwargs: Any) -> Reservation:
        billing.price_catalog_seed()  # idempotent: a flushed catalog is put back
        return billing.budget_reserve(model_class(**kwargs))

    _build = _create


class AITaskFactory(DjangoModelFactory[AITask]):
    """A pending task holding a real reservation for its estimate (as submit leaves it,
    without the dispatch). Traits move it on: ``processing`` (a live lease),
    ``lease_expired`` (its worker died), ``failed``, ``done``."""

    class Meta:
        model = AITask
        skip_postgeneration_save = True  # the hook writes reservation_id itself

    class Params:
        processing = factory.Trait(
            status=AITask.Status.PROCESSING,
            attempts=1,
            lease_token=factory.LazyFunction(uuid.uuid4),
            lease_expires_at=factory.LazyFunction(lambda: timezone.now() + timedelta(seconds=30)),
            started_at=factory.LazyFunction(timezone.now),
        )
        lease_expired = factory.Trait(
            processing=True, lease_expires_at=factory.LazyFunction(lambda: timezone.now() - timedelta(seconds=1))
        )
        failed = factory.Trait(
            status=AITask.Status.FAILED,
            attempts=1,
            error="The provider failed.",
            error_code="provider_error",
            completed_at=factory.LazyFunction(timezone.now),
        )
        done = factory.Trait(
            status=AITask.Status.DONE,
            attempts=1,
            result="An answer.",
            input_tokens=10,
            output_tokens=20,
            completed_at=factory.LazyFunction(timezone.now),
        )

    organization = factory.SubFactory(OrganizationFactory)
    prompt = factory.Sequence(lambda n: f"Prompt number {n}.")
    model = "fake-small"
    max_tokens = 256

    @factory.post_generation
    def reservation(obj: AITask, create: bool, extracted: Any, **kwargs: Any) -> None:  # noqa: N805
        """Open tasks hold their estimate, like submitted ones; ended ones hold nothing."""
        if not create or obj.status not in AITask.OPEN:
            return
        billing.price_catalog_seed()  # idempotent: a flushed catalog is put back
        held = billing.budget_reserve(
            ReservationRequest(
                organization_id=obj.organization_id,
                api_key_id=obj.api_key_id,
                task_id=obj.id,
                model=obj.model,
                estimated_input_tokens=estimate_tokens(obj.prompt),
                max_output_tokens=obj.max_tokens,
            )
        )
        AITask.objects.filter(pk=obj.pk).update(reservation_id=held.id)
        obj.reservation_id = held.id


class DispatchPolicyFactory(DjangoModelFactory[DispatchPolicy]):
    class Meta:
        model = DispatchPolicy

    organization = factory.SubFactory(OrganizationFactory)
    max_in_flight = 1


class EventDeadLetterFactory(DjangoModelFactory[EventDeadLetter]):
    class Meta:
        model = EventDeadLetter

    event_id = factory.LazyFunction(uuid.uuid4)
    event_type = "llm.ai_task.finished"
    handler = "analytics.handlers.record_outcome"
    payload = factory.LazyAttribute(lambda letter: {"event_id": str(letter.event_id)})
    attempts = 4
    error = "RuntimeError: the handler failed."
    failed_at = factory.LazyFunction(timezone.now)
