"""Feature switches (django-waffle, docs/decisions/feature-flags.md), read in services.

A switch is one named on/off value in PostgreSQL (waffle's ``Switch``), edited in the
admin (Waffle > Switches), cached in Redis by waffle and invalidated when saved, so every
process sees a change within one cache round trip.

``Switch(name, default=...)`` declares one in code: its name, what it guards and the value
used while nobody has created it in the admin. A missing switch, or a database or Redis
error while reading it, gives the default: a flag never fails a request.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from waffle import get_waffle_switch_model

log = structlog.get_logger(__name__)

DECLARED: dict[str, Switch] = {}


@dataclass(frozen=True)
class Switch:
    name: str
    default: bool
    note: str = ""

    def __post_init__(self) -> None:
        DECLARED[self.name] = self

    def is_active(self) -> bool:
        try:
            switch = get_waffle_switch_model().get(self.name)
        except Exception:
            log.warning("feature_switch_unreadable", switch=self.name, default=self.default, exc_info=True)
            return self.default
        if switch.pk is None:  # not created in the admin
            return self.default
        return bool(switch.active)
