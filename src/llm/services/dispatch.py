"""The dispatch gate: which pending AI tasks go to the broker, and when (SPEC §2, §5).

A Celery queue is first in, first out, so a message sent is a place taken: if every
task went to the broker at submit, organization B's one task would wait behind A's
2,000. So the broker holds at most a *window* of messages per queue — the slots of the
live workers that consume it (each registers its slots in Redis) plus a little
headroom — and the rest wait here, in PostgreSQL, ``pending`` with ``dispatched_at``
NULL ("held").

- **Submit** sends at once while the queue has room and nothing is held (the fast path:
  one query); otherwise the task is held.
- **Fill** (``dispatch_fill``), run by a worker when a call ends and every second by its
  runtime, hands the free places out by max-min fair share: each place goes to the
  organization with the fewest tasks outstanding, oldest held task first. An
  organization at its cap (``DISPATCH_ORG_MAX_IN_FLIGHT`` or its ``DispatchPolicy``) is
  passed over while another organization is waiting, never while it is alone: the gate
  is work-conserving.

Counts come from PostgreSQL, the source of truth, so nothing drifts when a worker dies
or Redis is restarted; only pool sizes live in Redis, with an expiry.
"""

from __future__ import annotations

import contextlib
import time
import zlib
from collections.abc import Iterable
from typing import cast
from uuid import UUID

import structlog
from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from contracts.llm import QUEUE_FOR_PRIORITY, FillReport, QueueName
from llm import telemetry
from llm.models import AITask, DispatchPolicy

log = structlog.get_logger(__name__)
RUN_TASK = "llm.run_ai_task"
PRIORITY_FOR_QUEUE = {queue: priority for priority, queue in QUEUE_FOR_PRIORITY.items()}
_TABLE = AITask._meta.db_table
_OUTSTANDING = "(status = 'processing' OR (status = 'pending' AND dispatched_at IS NOT NULL))"
_HELD = "status = 'pending' AND dispatched_at IS NULL AND (available_at IS NULL OR available_at <= now())"


def queue_for(priority: str) -> QueueName:
    return cast("QueueName", QUEUE_FOR_PRIORITY[priority])


def send(task_id: UUID, priority: str, *, countdown: float | None = None) -> bool:
    """Send the task to its queue's broker list. A broker outage is logged, not raised: the
    task stays ``pending`` and the sweeper sends it again."""
    try:
        with telemetry.task_send(task_id):  # the gate's later send continues the task's trace
            current_app.send_task(
                RUN_TASK, args=[str(task_id)], task_id=str(task_id), queue=queue_for(priority), countdown=countdown
            )
    except Exception as exc:  # kombu raises a variety of connection errors
        log.warning("dispatch_failed", task_id=str(task_id), error=type(exc).__name__)
        return False
    return True


def _slots_key(queue: str) -> str:
    return f"sy:pool-slots:{queue}"


def pool_register(*, queue: str, node: str, slots: int, ttl_s: float) -> None:
    """A worker announces its slots for ``queue``; the entry lapses after ``ttl_s``."""
    try:
        get_redis_connection("default").hset(_slots_key(queue), node, f"{slots}:{time.time() + ttl_s:.0f}")
    except RedisError:
        log.warning("pool_register_failed", queue=queue, exc_info=True)


def pool_unregister(*, queue: str, node: str) -> None:
    try:
        get_redis_connection("default").hdel(_slots_key(queue), node)
    except RedisError:
        log.warning("pool_unregister_failed", queue=queue, exc_info=True)


def pool_slots(queue: str) -> int | None:
    """Slots of the live workers of ``queue`` (expired entries are dropped), or None when
    Redis cannot say."""
    try:
        client = get_redis_connection("default")
        entries = client.hgetall(_slots_key(queue))
    except RedisError:
        return None
    now, total, stale = time.time(), 0, []
    for node, value in entries.items():
        slots, _, expires = value.decode().partition(":")
        if float(expires or 0) < now:
            stale.append(node)
        else:
            total += int(slots)
    if stale:
        with contextlib.suppress(RedisError):
            client.hdel(_slots_key(queue), *stale)
    return total


def window(queue: str) -> int:
    """How many messages of ``queue`` may be outstanding (in the broker or running)."""
    slots = pool_slots(queue)
    if slots is None:  # Redis is down, and so is a Redis broker: keep a modest window
        return settings.DISPATCH_FALLBACK_WINDOW
    return slots + settings.DISPATCH_HEADROOM if slots else 0


def admit_at_submit(priority: str) -> bool:
    """The fast path: may a task just submitted go straight to the broker? Only while its
    queue has room and nobody is held (else it would overtake them)."""
    limit = window(QUEUE_FOR_PRIORITY[priority])
    if limit <= 0:
        return False
    # Both answers read an index and stop early: whether one task is held (aitask_held),
    # and the outstanding count up to the window (aitask_outstanding). Counting every open
    # row instead cost a submit 3-4 ms once thousands were held (issue 9's profile).
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {_TABLE} WHERE priority = %s AND {_HELD}), "  # noqa: S608
            f"(SELECT count(*) FROM (SELECT 1 FROM {_TABLE} WHERE priority = %s AND {_OUTSTANDING} LIMIT %s) AS o)",
            [priority, priority, limit],
        )
        anyone_held, outstanding = cursor.fetchone()
    return not anyone_held and outstanding < limit


def dispatch_fill(queue: str) -> FillReport:
    """Send held tasks of ``queue`` to the broker while its window has room, fairly across
    organizations. One filler per queue at a time (an advisory lock); a second caller
    returns at once, since the one running will hand out the free places."""
    priority = PRIORITY_FOR_QUEUE[queue]
    limit = window(queue)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_lock_id(queue)])
            if not cursor.fetchone()[0]:
                return FillReport(queue=queue, window=limit, outstanding=-1, sent=0)
            cursor.execute(
                f"SELECT organization_id, count(*) FROM {_TABLE} "  # noqa: S608
                f"WHERE priority = %s AND {_OUTSTANDING} GROUP BY organization_id",
                [priority],
            )
            outstanding = dict(cursor.fetchall())
            free = limit - sum(outstanding.values())
            if free <= 0:
                return FillReport(queue=queue, window=limit, outstanding=sum(outstanding.values()), sent=0)
            cursor.execute(
                f"SELECT id, organization_id FROM (SELECT id, organization_id, created_at, "  # noqa: S608
                f"row_number() OVER (PARTITION BY organization_id ORDER BY created_at, id) AS rank "
                f"FROM {_TABLE} WHERE priority = %s AND {_HELD}) AS held WHERE rank <= %s "
                f"ORDER BY organization_id, rank",
                [priority, free],
            )
            held: dict[UUID, list[UUID]] = {}
            for task_id, org in cursor.fetchall():
                held.setdefault(org, []).append(task_id)
        if not held:
            return FillReport(queue=queue, window=limit, outstanding=sum(outstanding.values()), sent=0)
        picks = fair_picks(held, outstanding, free=free, caps=_caps(held))
        sent = list(
            AITask.objects.select_for_update(skip_locked=True)
            .filter(id__in=picks, status=AITask.Status.PENDING, dispatched_at__isnull=True)
            .values_list("id", flat=True)
        )
        AITask.objects.filter(id__in=sent).update(dispatched_at=Now(), dispatch_count=F("dispatch_count") + 1)
        transaction.on_commit(lambda: _send(sent, priority))
    return FillReport(queue=queue, window=limit, outstanding=sum(outstanding.values()), sent=len(sent))


def fair_picks(
    held: dict[UUID, list[UUID]], outstanding: dict[UUID, int], *, free: int, caps: dict[UUID, int]
) -> list[UUID]:
    """Max-min fair share: each free place goes to the waiting organization with the
    fewest outstanding tasks (its oldest held task). Caps count only while another
    organization is still waiting; an organization alone takes every free place."""
    counts = {org: outstanding.get(org, 0) for org in held}
    queues = {org: list(reversed(tasks)) for org, tasks in held.items()}
    picks: list[UUID] = []
    while len(picks) < free and queues:
        waiting = list(queues)
        under_cap = [org for org in waiting if not caps.get(org) or counts[org] < caps[org]]
        candidates = under_cap if under_cap and len(waiting) > 1 else waiting
        org = min(candidates, key=lambda o: (counts[o], str(o)))
        picks.append(queues[org].pop())
        counts[org] += 1
        if not queues[org]:
            del queues[org]
    return picks


def _caps(orgs: Iterable[UUID]) -> dict[UUID, int]:
    default = settings.DISPATCH_ORG_MAX_IN_FLIGHT
    caps = dict.fromkeys(orgs, default)
    for org, cap in DispatchPolicy.objects.filter(organization_id__in=list(caps)).values_list(
        "organization_id", "max_in_flight"
    ):
        caps[org] = cap
    return caps


def _send(task_ids: list[UUID], priority: str) -> None:
    for task_id in task_ids:
        send(task_id, priority)


def _lock_id(queue: str) -> int:
    return zlib.crc32(f"sy-dispatch:{queue}".encode()) - 2**31
