"""A subscriber used by the outbox tests."""

from contracts.events import DomainEvent

received: list[DomainEvent] = []


def remember(event: DomainEvent) -> None:
    received.append(event)
