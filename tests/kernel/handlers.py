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


# Events marked with this ``error_code`` fail: always (fails_when_marked), or the first
# time this process sees them (fails_once_when_marked), so one event of a batch fails.
MARK = "fail-me"
_failed_once: set[object] = set()


def fails_when_marked(event: DomainEvent) -> None:
    if getattr(event, "error_code", None) == MARK:
        failures.append(event)
        raise RuntimeError("this subscriber fails on marked events")
    received.append(event)


def fails_once_when_marked(event: DomainEvent) -> None:
    if getattr(event, "error_code", None) == MARK and event.event_id not in _failed_once:
        _failed_once.add(event.event_id)
        failures.append(event)
        raise RuntimeError("this subscriber fails once on marked events")
    received.append(event)
