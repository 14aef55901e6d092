"""What runs beside the provider calls of one worker process: the keeper thread.

Calls run on many threads of one process (Celery's ``threads`` pool), where Celery's
time limits do not exist, so one daemon thread per process keeps every promise that
needs a clock:

- **Leases**: every ``TASK_HEARTBEAT_S`` one UPDATE renews the lease of every call in
  flight (``now() + TASK_LEASE_SECONDS``, the database's clock). A call whose row is no
  longer ours (cancelled, or reclaimed after we stalled) is aborted.
- **Deadlines**: at the soft deadline a call is aborted (it ends ``failed``, timeout);
  a call still running at the hard deadline did not stop when asked, so its task is
  failed for it and its thread abandoned; past ``WORKER_MAX_ABANDONED_CALLS`` the
  process exits so that its supervisor starts a fresh one (broker redelivery and the
  leases take care of the rest).
- **Cancel**: the cancel flags of the calls in flight are read from Redis every
  ``CANCEL_POLL_S``, so a cancelled call stops within about a second.
- **Dispatch**: the pool announces its slots for the dispatch gate and fills the gate
  every ``DISPATCH_TICK_S``, and at once when a call ends.

It must not raise: every step logs its failure and the loop goes on.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from uuid import UUID

import structlog
from django.conf import settings
from django.db import connection
from django_redis import get_redis_connection
from redis.exceptions import RedisError

from llm import streams
from llm.models import AITask
from llm.providers.base import CallGuard

log = structlog.get_logger(__name__)
TICK_S = 0.25
CANCEL_POLL_S = 0.5
REGISTER_EVERY_S = 5.0
ALIVE_EVERY_S = 1.0
EXIT_STATUS_ABANDONED = 70  # EX_SOFTWARE: the supervisor restarts the worker


@dataclass(eq=False)
class Call:
    task_id: UUID
    lease_token: UUID
    queue: str
    guard: CallGuard
    soft_deadline: float
    hard_deadline: float
    abandoned: bool = False


@dataclass
class _Pool:
    queues: list[str]
    slots: int
    node: str


@dataclass(eq=False)
class Runtime:
    pid: int = field(default_factory=os.getpid)
    autostart: bool = True  # False: no thread, the steps are called by hand (tests)
    pool: _Pool | None = None
    abandoned: int = 0
    _calls: dict[UUID, Call] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _dirty: set[str] = field(default_factory=set)
    _thread: threading.Thread | None = None

    # -- used by the worker ------------------------------------------------------------
    def serve_pool(self, *, queues: list[str], slots: int, node: str) -> None:
        """This process consumes ``queues`` with ``slots`` threads: announce them and
        fill the gate (called once, when the Celery worker is ready)."""
        self.pool = _Pool(queues=[q for q in queues if q in _AI_QUEUES], slots=slots, node=node)
        self._register()
        self._start()
        self.poke(*self.pool.queues)

    def leave_pool(self) -> None:
        from llm.services.dispatch import pool_unregister

        if self.pool is not None:
            for queue in self.pool.queues:
                pool_unregister(queue=queue, node=self.pool.node)

    def track(self, *, task_id: UUID, lease_token: UUID, queue: str, guard: CallGuard) -> Call:
        now = time.monotonic()
        call = Call(
            task_id=task_id,
            lease_token=lease_token,
            queue=queue,
            guard=guard,
            soft_deadline=now + settings.TASK_SOFT_TIME_LIMIT,
            hard_deadline=now + settings.TASK_TIME_LIMIT,
        )
        with self._lock:
            self._calls[task_id] = call
        self._start()
        return call

    def untrack(self, call: Call) -> None:
        with self._lock:
            if self._calls.get(call.task_id) is call:
                del self._calls[call.task_id]

    def poke(self, *queues: str) -> None:
        """A place may have freed up in ``queues``: fill the gate soon (coalesced)."""
        if self.pool is None:
            return  # not a worker (tests, shell): the workers' own ticks fill the gate
        with self._lock:
            self._dirty.update(q for q in queues if q in _AI_QUEUES)
        self._wake.set()

    def in_flight(self) -> int:
        with self._lock:
            return sum(1 for call in self._calls.values() if not call.abandoned)

    # -- the keeper thread -------------------------------------------------------------
    def _start(self) -> None:
        if not self.autostart:
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._loop, name="switchyard-keeper", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        next_beat = time.monotonic() + settings.TASK_HEARTBEAT_S
        next_cancel = next_register = next_fill = next_alive = 0.0
        while True:
            self._wake.wait(TICK_S)
            self._wake.clear()
            now = time.monotonic()
            self._step("deadlines", self._enforce_deadlines, now)
            if now >= next_cancel:
                next_cancel = now + CANCEL_POLL_S
                self._step("cancel_poll", self._poll_cancels)
            if now >= next_beat:
                next_beat = now + settings.TASK_HEARTBEAT_S
                self._step("heartbeat", self._renew_leases)
            if self.pool is not None:
                if now >= next_alive:  # worker_health reads it: no beat, a dead or stuck pool
                    next_alive = now + ALIVE_EVERY_S
                    self._step("liveness", self._alive)
                if now >= next_register:
                    next_register = now + REGISTER_EVERY_S
                    self._step("register", self._register)
                with self._lock:
                    queues, self._dirty = self._dirty, set()
                if now >= next_fill:
                    next_fill = now + settings.DISPATCH_TICK_S
                    queues |= set(self.pool.queues)
                for queue in sorted(queues):
                    self._step("dispatch_fill", self._fill, queue)

    def _step(self, name: str, func: object, *args: object) -> None:
        try:
            func(*args)  # type: ignore[operator]
        except Exception:
            log.exception("keeper_step_failed", step=name)
        finally:
            if not connection.in_atomic_block:
                connection.close()  # the keeper holds no connection between steps

    def _snapshot(self) -> list[Call]:
        with self._lock:
            return [call for call in self._calls.values() if not call.abandoned]

    def _enforce_deadlines(self, now: float) -> None:
        for call in self._snapshot():
            if now >= call.hard_deadline:
                self._abandon(call)
            elif now >= call.soft_deadline:
                call.guard.abort("timeout")

    def _abandon(self, call: Call) -> None:
        from llm.services.execution import task_fail_abandoned

        call.abandoned = True
        self.abandoned += 1
        log.error("call_abandoned", task_id=str(call.task_id), abandoned=self.abandoned)
        task_fail_abandoned(task_id=call.task_id, lease_token=call.lease_token)
        if self.pool is not None and self.abandoned >= settings.WORKER_MAX_ABANDONED_CALLS:
            log.critical("worker_exiting_abandoned_calls", abandoned=self.abandoned)
            os._exit(EXIT_STATUS_ABANDONED)

    def _poll_cancels(self) -> None:
        calls = [call for call in self._snapshot() if not call.guard.aborted]
        if not calls:
            return
        try:
            flags = get_redis_connection("default").mget([streams.cancel_key(c.task_id) for c in calls])
        except RedisError:
            return  # the heartbeat still sees the cancelled row
        for call, flag in zip(calls, flags, strict=True):
            if flag is not None:
                call.guard.abort("cancelled")

    def _renew_leases(self) -> None:
        calls = self._snapshot()
        if not calls:
            return
        with connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {AITask._meta.db_table} AS t "  # noqa: S608
                "SET lease_expires_at = now() + make_interval(secs => %s) "
                "FROM unnest(%s::uuid[], %s::uuid[]) AS held(id, token) "
                "WHERE t.id = held.id AND t.lease_token = held.token AND t.status = 'processing' "
                "RETURNING t.id",
                [settings.TASK_LEASE_SECONDS, [c.task_id for c in calls], [c.lease_token for c in calls]],
            )
            renewed = {row[0] for row in cursor.fetchall()}
        missed = [call for call in calls if call.task_id not in renewed]
        if not missed:
            return
        # Cancelled (the cancel flag may be lost with Redis) or reclaimed by another worker.
        # A row this connection cannot see at all is left alone: nobody else can hold it.
        statuses = dict(AITask.objects.filter(id__in=[c.task_id for c in missed]).values_list("id", "status"))
        for call in missed:
            if call.task_id in statuses:
                cancelled = statuses[call.task_id] == AITask.Status.CANCELLED
                call.guard.abort("cancelled" if cancelled else "lease_lost")

    def _register(self) -> None:
        from llm.services.dispatch import pool_register

        if self.pool is not None:
            ttl = REGISTER_EVERY_S * 3
            for queue in self.pool.queues:
                pool_register(queue=queue, node=self.pool.node, slots=self.pool.slots, ttl_s=ttl)

    def _alive(self) -> None:
        from kernel.health import pool_heartbeat

        if self.pool is not None:
            pool_heartbeat(
                queues=self.pool.queues, node=self.pool.node, in_flight=self.in_flight(), slots=self.pool.slots
            )

    def _fill(self, queue: str) -> None:
        from llm.services.dispatch import dispatch_fill

        dispatch_fill(queue)


_AI_QUEUES = ("priority", "default", "low")
_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """This process's runtime (a forked child gets its own, not its parent's)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = Runtime()
        return _runtime
