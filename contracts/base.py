"""Base classes every contract model shares."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Contract(BaseModel):
    """Immutable, strict about unknown fields, built from ORM objects by each context's mappers."""

    model_config = ConfigDict(frozen=True, extra="forbid")
