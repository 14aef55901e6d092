"""Subscribers used by the outbox and dead-letter tests."""

from contracts.events import DomainEvent

received: list[DomainEvent] = []
failures: list[DomainEvent] = []
broken = {"now": True}  # fails_while_broken raises until a test flips this


def remember(event: DomainEvent) -> None:
    received.append(event)


def always_fails(event: DomainEvent) -> None:
    failures.append(event)
    raise RuntimeError("this subscriber always fails")


def fails_while_broken(event: DomainEvent) -> None:
    if broken["now"]:
        failures.append(event)
        raise RuntimeError("this subscriber is broken until it is fixed")
    received.append(event)
