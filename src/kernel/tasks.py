"""Kernel Celery tasks: thin entry points into kernel.services."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from kernel import services


@shared_task(name="kernel.relay_outbox", ignore_result=True)
def relay_outbox_task() -> int:
    total = 0
    while (published := services.outbox_relay()) > 0:
        total += published
    return total


@shared_task(
    name="kernel.handle_event",
    ignore_result=True,
    autoretry_for=(Exception,),
    retry_backoff=True,
    retry_backoff_max=300,
    retry_jitter=True,
    max_retries=8,
)
def handle_event_task(handler: str, event_type: str, payload: dict[str, Any]) -> None:
    services.event_handle(handler=handler, event_type=event_type, payload=payload)


@shared_task(name="kernel.cleanup_idempotency_keys", ignore_result=True)
def cleanup_idempotency_keys_task() -> int:
    return services.idempotency_cleanup()


@shared_task(name="kernel.cleanup_outbox", ignore_result=True)
def cleanup_outbox_task() -> int:
    return services.outbox_cleanup()
