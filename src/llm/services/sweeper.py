"""The sweeper (beat, every 30 s): no task stays open forever, no reservation is left held.

- ``processing`` tasks whose lease expired (the worker died; the keeper renews live
  leases every few seconds) go back to ``pending`` and wait at the dispatch gate, which
  sends them at once; or they fail and are dead-lettered after the last attempt;
- ``pending`` tasks that were sent to the broker but never started (a broker outage at
  submit, a lost message) are sent again, each one less often: after the grace period,
  then twice that, four times... (a task waiting behind a backlog is not flooded with
  copies; a copy finds nothing to claim anyway);
- ``pending`` tasks older than ``TASK_PENDING_EXPIRY_S`` fail as expired;
- reservations still held for tasks that have ended are released.
Each step finds its rows with one query on the database's clock, in bounded batches,
with SKIP LOCKED so two overlapping sweeps never touch the same row; each row is changed
in its own savepoint, so one row that fails is logged and skipped, not the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

import structlog
from django.conf import settings
from django.db import transaction
from django.db.models import BooleanField, F, Q
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce, Now
from django.utils import timezone

from billing import services as billing
from contracts.llm import SweepReport
from llm.models import AITask
from llm.services.dispatch import send
from llm.services.execution import fail_bookkeeping
from llm.services.webhooks import enqueue_webhook

log = structlog.get_logger(__name__)
MAX_REDISPATCH_DOUBLINGS = 6  # at most grace x 64 between two copies of one message


def tasks_sweep() -> SweepReport:
    batch = settings.SWEEPER_BATCH_SIZE
    counts = {"lease_expired": 0, "failed": 0, "expired": 0, "errors": 0}
    to_dispatch: list[tuple[str, str]] = []

    with transaction.atomic():
        expired_leases = list(
            AITask.objects.select_for_update(skip_locked=True)
            .filter(status=AITask.Status.PROCESSING, lease_expires_at__lt=Now())
            .order_by("lease_expires_at")[:batch]
        )
        for task in expired_leases:
            counts["lease_expired"] += 1
            if _in_savepoint(task, _return_or_fail, counts):
                counts["failed"] += task.attempts >= settings.TASK_MAX_ATTEMPTS

        too_old = list(
            AITask.objects.select_for_update(skip_locked=True)
            .filter(status=AITask.Status.PENDING, created_at__lt=Now() - _seconds(settings.TASK_PENDING_EXPIRY_S))
            .order_by("created_at")[:batch]
        )
        for task in too_old:
            if _in_savepoint(task, _expire, counts):
                counts["expired"] += 1

        lost = list(
            AITask.objects.select_for_update(skip_locked=True)
            .filter(status=AITask.Status.PENDING, dispatched_at__isnull=False)
            .filter(_resend_due())
            .order_by("dispatched_at")
            .values_list("pk", "priority")[:batch]
        )
        if lost:
            AITask.objects.filter(pk__in=[pk for pk, _ in lost]).update(
                dispatched_at=Now(), dispatch_count=F("dispatch_count") + 1
            )
            to_dispatch.extend((str(pk), priority) for pk, priority in lost)
        transaction.on_commit(lambda: _dispatch_all(to_dispatch))

    released = _release_orphaned_reservations()
    webhooks = _requeue_stranded_webhooks(timezone.now() - timedelta(seconds=settings.SWEEPER_PENDING_GRACE_S))
    report = SweepReport(
        webhooks_requeued=webhooks,
        redispatched=len(to_dispatch),
        lease_expired=counts["lease_expired"],
        failed=counts["failed"],
        reservations_released=released,
        expired=counts["expired"],
        errors=counts["errors"],
    )
    if any(value for key, value in report.model_dump().items() if key != "lease_expired"):
        log.info("sweep", **report.model_dump())
    return report


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _resend_due() -> RawSQL:
    """Sent at least ``grace x 2^(copies sent - 1)`` ago, and due."""
    return RawSQL(
        "dispatched_at + make_interval(secs => %s * power(2, least(greatest(dispatch_count - 1, 0), %s))) <= now()"
        " AND (available_at IS NULL OR available_at <= now())",
        (settings.SWEEPER_PENDING_GRACE_S, MAX_REDISPATCH_DOUBLINGS),
        output_field=BooleanField(),
    )


def _in_savepoint(task: AITask, change: Callable[[AITask], None], counts: dict[str, int]) -> bool:
    try:
        with transaction.atomic():
            change(task)
    except Exception:
        counts["errors"] += 1
        log.exception("sweep_row_failed", task_id=str(task.pk))
        return False
    return True


def _return_or_fail(task: AITask) -> None:
    if task.attempts >= settings.TASK_MAX_ATTEMPTS:
        error = f"The worker was lost and the task had no attempts left ({task.attempts})."
        AITask.objects.filter(pk=task.pk).update(
            status=AITask.Status.FAILED,
            error=error,
            error_code="worker_lost",
            completed_at=Now(),
            lease_token=None,
            lease_expires_at=None,
        )
        fail_bookkeeping(task, error=error, dead_letter=True)
        return
    # Back to the gate (dispatched_at NULL): a live worker's keeper sends it within a tick.
    AITask.objects.filter(pk=task.pk).update(
        status=AITask.Status.PENDING,
        lease_token=None,
        lease_expires_at=None,
        available_at=None,
        dispatched_at=None,
        error="The worker was lost; the task will run again.",
        error_code="worker_lost",
    )


def _expire(task: AITask) -> None:
    error = f"The task waited longer than {settings.TASK_PENDING_EXPIRY_S} s without starting."
    AITask.objects.filter(pk=task.pk).update(
        status=AITask.Status.FAILED, error=error, error_code="expired", completed_at=Now()
    )
    fail_bookkeeping(task, error=error, dead_letter=True)


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
        send(UUID(task_id), priority)


def _release_orphaned_reservations() -> int:
    """Held reservations whose task has ended (or never got inserted) are released."""
    cutoff = timezone.now() - timedelta(seconds=settings.TASK_TIME_LIMIT)
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
