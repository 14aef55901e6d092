"""Helpers for billing tests: reserve and settle through the public services, move the clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from unittest import mock
from uuid import UUID

from billing import services as billing
from contracts.billing import Reservation, ReservationRequest, TokenUsage, UsageEntry

# fake-small costs $0.50 in / $1.50 out per million tokens, so 1000 + 1000 tokens
# reserve exactly $0.002.
ESTIMATE = Decimal("0.002")


def reserve(
    organization_id: UUID,
    *,
    api_key_id: UUID | None = None,
    model: str = "fake-small",
    input_tokens: int = 1000,
    output_tokens: int = 1000,
    task_id: UUID | None = None,
    fallback_models: list[str] | None = None,
) -> Reservation:
    return billing.budget_reserve(
        ReservationRequest(
            organization_id=organization_id,
            api_key_id=api_key_id,
            task_id=task_id or uuid.uuid4(),
            model=model,
            estimated_input_tokens=input_tokens,
            max_output_tokens=output_tokens,
            fallback_models=fallback_models or [],
        )
    )


def settle(reservation: Reservation, input_tokens: int = 400, output_tokens: int = 600) -> UsageEntry:
    return billing.reservation_settle(
        reservation_id=reservation.id, usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)
    )


@contextmanager
def frozen(moment: datetime) -> Iterator[None]:
    """Move Django's clock (``auto_now_add`` and billing's periods) to ``moment``."""
    with mock.patch("django.utils.timezone.now", return_value=moment.astimezone(UTC)):
        yield
