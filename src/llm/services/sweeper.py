"""The sweeper (beat, every 30 s): no task stays open forever, no reservation is left held.

- ``pending`` tasks that are due but were not dispatched recently (broker outage at
  submit, a lost retry message) are dispatched again;
- ``processing`` tasks whose lease expired (the worker died) go back to ``pending``, or
  fail and are dead-lettered after the last attempt;
- reservations still held for tasks that have ended are released.
Each step finds its rows with one query, in bounded batches, with SKIP LOCKED so two
overlapping sweeps never touch the same row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from uuid import UUID

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce
from django.utils import timezone

from billing import services as billing
from llm.models import AITask
from llm.services._common import dispatch, enqueue_webhook
from llm.services.execution import fail_bookkeeping

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class SweepReport:
    redispatched: int
    lease_expired: int
    failed: int
    reservations_released: int
    webhooks_requeued: int = 0


def tasks_sweep() -> SweepReport:
    batch = settings.SWEEPER_BATCH_SIZE
    now = timezone.now()
    grace = now - timedelta(seconds=settings.SWEEPER_PENDING_GRACE_S)
    to_dispatch: list[tuple[str, str]] = []
    failed = expired_count = 0

    with transaction.atomic():
        expired = list(
            AITask.objects.select_for_update(skip_locked=True)
            .filter(status=AITask.Status.PROCESSING, lease_expires_at__lt=now)
            .order_by("lease_expires_at")[:batch]
        )
        for task in expired:
            expired_count += 1
            if task.attempts >= settings.TASK_MAX_ATTEMPTS:
                error = f"The worker was lost and the task had no attempts left ({task.attempts})."
                AITask.objects.filter(pk=task.pk).update(
                    status=AITask.Status.FAILED,
                    error=error,
                    error_code="worker_lost",
                    completed_at=now,
                    lease_token=None,
                    lease_expires_at=None,
                )
                fail_bookkeeping(task, error=error, dead_letter=True)
                failed += 1
            else:
                AITask.objects.filter(pk=task.pk).update(
                    status=AITask.Status.PENDING,
                    lease_token=None,
                    lease_expires_at=None,
                    available_at=None,
                    dispatched_at=now,
                    error="The worker was lost; the task will run again.",
                    error_code="worker_lost",
                )
                to_dispatch.append((str(task.pk), task.priority))

        stale = list(
            AITask.objects.select_for_update(skip_locked=True)
            .annotate(due=Coalesce("available_at", "created_at"))
            .filter(status=AITask.Status.PENDING, due__lte=grace)
            .filter(Q(dispatched_at__isnull=True) | Q(dispatched_at__lte=grace))
            .order_by("created_at")
            .values_list("pk", "priority")[:batch]
        )
        if stale:
            AITask.objects.filter(pk__in=[pk for pk, _ in stale]).update(dispatched_at=now)
            to_dispatch.extend((str(pk), priority) for pk, priority in stale)

        transaction.on_commit(lambda: _dispatch_all(to_dispatch))

    released = _release_orphaned_reservations()
    webhooks = _requeue_stranded_webhooks(grace)
    report = SweepReport(
        webhooks_requeued=webhooks,
        redispatched=len(to_dispatch),
        lease_expired=expired_count,
        failed=failed,
        reservations_released=released,
    )
    if any((report.redispatched, report.failed, report.reservations_released, report.webhooks_requeued)):
        log.info("sweep", **asdict(report))
    return report


def _requeue_stranded_webhooks(grace: datetime) -> int:
    """Pending webhooks nobody is delivering whose next attempt was due before ``grace``:
    never enqueued (broker outage when the task ended) or a retry message lost. Each is
    marked due now, so a webhook still waiting behind a backlog is sent again at most once
    per grace period; the delivery's claim makes any duplicate message a no-op."""
    now = timezone.now()
    with transaction.atomic():
        stranded = list(
            AITask.objects.select_for_update(skip_locked=True)
            .annotate(webhook_due=Coalesce("webhook_next_at", "completed_at", "created_at"))
            .filter(webhook_status=AITask.WebhookStatus.PENDING, webhook_due__lte=grace)
            .filter(Q(webhook_claimed_until__isnull=True) | Q(webhook_claimed_until__lt=now))
            .order_by("webhook_due")
            .values_list("id", flat=True)[: settings.SWEEPER_BATCH_SIZE]
        )
        if stranded:
            AITask.objects.filter(id__in=stranded).update(webhook_next_at=now)

        def enqueue() -> None:
            for task_id in stranded:
                enqueue_webhook(task_id)

        transaction.on_commit(enqueue)
    return len(stranded)


def _dispatch_all(tasks: list[tuple[str, str]]) -> None:
    for task_id, priority in tasks:
        dispatch(UUID(task_id), priority)


def _release_orphaned_reservations() -> int:
    """Held reservations whose task has ended (or never got inserted) are released."""
    cutoff = timezone.now() - timedelta(seconds=settings.TASK_LEASE_SECONDS)
    held = billing.reservations_held(created_before=cutoff, limit=settings.SWEEPER_BATCH_SIZE)
    if not held:
        return 0
    open_task_ids = set(
        AITask.objects.filter(id__in=[r.task_id for r in held], status__in=AITask.OPEN).values_list("id", flat=True)
    )
    released = 0
    for reservation in held:
        if reservation.task_id not in open_task_ids and billing.reservation_release(reservation_id=reservation.id):
            released += 1
    return released
