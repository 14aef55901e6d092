"""Billing fixtures: the seeded price catalog, organizations, a ledger-row factory."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import UUID

import pytest

from billing import services as billing
from contracts.billing import UsageEntry
from tests.billing.helpers import frozen, reserve, settle
from users import services as users


@pytest.fixture(autouse=True)
def _price_catalog(_restore_catalog_after_flush: None, request: pytest.FixtureRequest) -> None:
    """Every billing test starts with the launch catalog, whatever ran before it."""
    request.getfixturevalue("transactional_db" if "transactional_db" in request.fixturenames else "db")
    billing.price_catalog_seed()


@pytest.fixture
def org_id(db: None) -> UUID:
    return users.organization_get_or_create(name=f"Billing {uuid.uuid4().hex[:8]}").id


@pytest.fixture
def charge() -> Callable[..., UsageEntry]:
    """Reserve and settle one task at ``at`` (UTC), returning its ledger row."""

    def run(
        organization_id: UUID,
        *,
        at: datetime | None = None,
        model: str = "fake-small",
        input_tokens: int = 400,
        output_tokens: int = 600,
        api_key_id: UUID | None = None,
    ) -> UsageEntry:
        with frozen(at or datetime.now(UTC)):
            reservation = reserve(organization_id, api_key_id=api_key_id, model=model)
            return settle(reservation, input_tokens, output_tokens)

    return run
