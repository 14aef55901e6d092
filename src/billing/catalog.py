"""The launch price catalog: the fake provider's two models (SPEC §6) and the current
Anthropic and OpenAI models, in USD per million tokens as the providers published them
when this was written. Pure data, no Django: migration 0002 seeds it, and
``billing.services.price_catalog_seed`` restores it (tests whose database was flushed).

Prices change later by adding rows in the admin (a new ``valid_from``), not here.
"""

from __future__ import annotations

from datetime import date
from typing import NamedTuple


class SeedPrice(NamedTuple):
    model: str
    provider: str
    input_usd_per_mtok: str
    output_usd_per_mtok: str


VALID_FROM = date(2025, 1, 1)

DEFAULT_PRICES: tuple[SeedPrice, ...] = (
    SeedPrice("fake-small", "fake", "0.50", "1.50"),
    SeedPrice("fake-large", "fake", "3", "15"),
    SeedPrice("claude-opus-4-5", "anthropic", "5", "25"),
    SeedPrice("claude-sonnet-4-5", "anthropic", "3", "15"),
    SeedPrice("claude-haiku-4-5", "anthropic", "1", "5"),
    SeedPrice("gpt-5", "openai", "1.25", "10"),
    SeedPrice("gpt-5-mini", "openai", "0.25", "2"),
    SeedPrice("gpt-5-nano", "openai", "0.05", "0.40"),
    SeedPrice("gpt-4.1", "openai", "2", "8"),
    SeedPrice("gpt-4.1-mini", "openai", "0.40", "1.60"),
    SeedPrice("gpt-4o", "openai", "2.50", "10"),
    SeedPrice("gpt-4o-mini", "openai", "0.15", "0.60"),
)
