"""Base classes every contract model shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """Immutable, strict about unknown fields, built from ORM objects by each context's mappers.

    Strict suits service inputs and outputs (caller and callee ship together). Domain
    events override it (``contracts.events.DomainEvent``): they cross releases in the
    outbox and the broker, so a consumer must ignore the fields it does not know yet.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
