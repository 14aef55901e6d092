"""The real stack: every role through ``bin/switchyard`` as production starts it, on free
ports; plus what the harness reads from outside (process-group memory from /proc,
PostgreSQL through its own connection).

Two ways to give a scenario its stack (``for_scenario``): a fresh stack per scenario with
the scenario's ``FAKE_LLM_LATENCY_MS`` (the full run), or, inside ``shared()`` (the quick
run), one stack for every scenario: the latency travels with each task as a
``#fake:sleep=<ms>`` directive, a role whose settings a scenario changes is restarted alone,
and between scenarios ``settle`` cancels the open work, aborts the calls still running and
waits until every pool reports none in flight.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
SWITCHYARD = str(ROOT / "bin" / "switchyard")
# BENCH_DB / BENCH_REDIS_URL / BENCH_BROKER_URL move a run elsewhere (two people's runs on
# one machine must not share them: cleanup purges the bench's queues).
DB = os.environ.get("BENCH_DB", "switchyard_bench")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")  # cache, throttles, SSE
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0")  # broker
QUEUES = ("priority", "default", "low", "bench-floor")
HARNESS = "bench-harness"  # the application_name of the harness's own connections
ROLES = ("web", "stream", "worker-priority", "worker-default", "worker-low", "beat")
POOL_QUEUES = ("priority", "default", "low")
# The roles that read a variable a scenario sets: on the shared stack only they restart.
ROLES_READING = {
    "WORKER_DEFAULT_CONCURRENCY": ("worker-default",),
    "WORKER_PRIORITY_CONCURRENCY": ("worker-priority",),
    "WORKER_LOW_CONCURRENCY": ("worker-low",),
}
_SCRATCH = Path(tempfile.mkdtemp(prefix="sy-bench-"))
_STARTED = time.monotonic()
_SPAWNS = itertools.count(1)


def log(message: str) -> None:
    """One line of the run's log, stamped with the seconds since the harness started."""
    print(f"bench: [{time.monotonic() - _STARTED:6.1f} s] {message}", flush=True)


def base_env() -> dict[str, str]:
    """The environment every process of the bench sees: production settings (DEBUG off)
    with the fake provider and the bench's own database and Redis databases."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_"))}
    for name in ("WORKER_CONCURRENCY", "WEB_WORKERS", "WEB_THREADS", "SWITCHYARD_ASGI", "LOG_LEVEL"):
        env.pop(name, None)
    env.update(
        PYTHONPATH=f"{ROOT / 'src'}:{ROOT}",
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="false",
        SECRET_KEY="bench-secret-key-bench-secret-key-bench-secret-key-0123456789",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"postgres:///{DB}",
        REDIS_URL=REDIS_URL,
        CELERY_BROKER_URL=BROKER_URL,
        CACHE_KEY_PREFIX="sybench",
        LLM_PROVIDER="fake",
        BENCH_VIEWS="true",
        API_THROTTLE_RATE="100000000/min",
        # The bench measures the pipeline, not the tenant limits.
        KEY_REQUESTS_PER_MINUTE="0",
        ORG_REQUESTS_PER_MINUTE="0",
        KEY_TOKENS_PER_MINUTE="0",
        ORG_TOKENS_PER_MINUTE="0",
        AUTH_FAILURES_PER_MINUTE="0",
        WEBHOOK_SIGNING_SECRETS="bench-webhook-secret-bench-webhook-secret-0123",
        METRICS_TOKEN="bench-metrics-token-bench-metrics-token-0123",
        STATIC_ROOT=str(_SCRATCH / "static"),
        CELERY_BEAT_SCHEDULE_FILENAME=str(_SCRATCH / "celerybeat-schedule"),
        PYTHONUNBUFFERED="1",
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def manage(*args: str) -> str:
    result = subprocess.run(
        [SWITCHYARD, "manage", *args], cwd=ROOT, env=base_env(), check=True, capture_output=True, text=True
    )
    return result.stdout


# ---------------------------------------------------------------------------------------
# /proc: memory and CPU of a whole process group (a container's worth of processes)
# ---------------------------------------------------------------------------------------
def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # fields after "(comm)": state ppid pgrp ...
            pids.append(int(entry.name))
    return pids


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass(frozen=True, slots=True)
class Memory:
    processes: int
    rss_mib: float  # sum of VmRSS: shared pages count once per process (what the issue asks)
    pss_mib: float  # proportional set size: shared pages split between processes
    threads: int = 0  # a threads pool starts its threads as concurrency first needs them


def group_memory(pgid: int) -> Memory:
    pids = group_pids(pgid)
    return Memory(
        processes=len(pids),
        rss_mib=sum(_status_kib(p, "VmRSS") for p in pids) / 1024,
        pss_mib=sum(_pss_kib(p) for p in pids) / 1024,
        threads=sum(_status_kib(p, "Threads") for p in pids),
    )


_TICK = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes of a group (children reaped by a
    live parent are included through cutime/cstime)."""
    total = 0
    for pid in group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / _TICK


# ---------------------------------------------------------------------------------------
# PostgreSQL and Redis, read from outside
# ---------------------------------------------------------------------------------------
class Database:
    """One autocommit connection of the harness (excluded from the counts it reports)."""

    def __init__(self) -> None:
        self.conn = psycopg.connect(f"dbname={DB}", autocommit=True, application_name=HARNESS)

    def scalar(self, sql: str, *params: Any) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self.conn.execute(sql, params).fetchall()

    def connections(self) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name <> %s", DB, HARNESS
            )
        )

    def connections_of(self, role: str) -> int:
        """Connections of one role: the settings name each ``switchyard-<role>`` (from
        SWITCHYARD_ROLE, which bin/switchyard exports). Until 2 December 2026 this counted
        ``sy-<role>``, a name the settings override: it read 0 whatever the role held."""
        return int(
            self.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                DB,
                f"switchyard-{role}",
            )
        )

    def processing(self) -> int:
        return int(self.scalar("SELECT count(*) FROM llm_aitask WHERE status = 'processing'"))

    def cancel_open(self) -> list[str]:
        """Leave no open work for the next scenario (a late redelivery then claims nothing);
        the ids of the tasks that were ``processing`` (their calls may still be running)."""
        for attempt in range(5):
            try:
                rows = self.conn.execute(
                    "WITH open AS (SELECT id, status FROM llm_aitask WHERE status IN ('pending', 'processing') "
                    "FOR UPDATE) UPDATE llm_aitask AS t SET status = 'cancelled', completed_at = now(), "
                    "lease_token = NULL, lease_expires_at = NULL FROM open WHERE t.id = open.id "
                    "RETURNING open.status, t.id"
                ).fetchall()
            except psycopg.errors.DeadlockDetected:  # against a worker's lease renewal: again
                if attempt == 4:
                    raise
                continue
            return [str(row[1]) for row in rows if row[0] == "processing"]
        return []

    def close(self) -> None:
        self.conn.close()


def purge_queues() -> None:
    """Drop the bench's queued messages (only the bench's queue keys in its broker database)."""
    client = redis.Redis.from_url(BROKER_URL)
    client.delete(*QUEUES, "unacked", "unacked_index")
    client.close()


def settle(db: Database, timeout: float = 20) -> float:
    """Leave a stack idle for the next scenario: cancel every open task, raise the cancel
    flag of each call still running (the keeper polls them every 0.5 s and aborts the call,
    as the cancel API does), purge the queues, then wait until every pool's heartbeat
    (written each second) reports no call in flight. Returns the seconds it took."""
    started, wall = time.monotonic(), time.time()
    running_ids = db.cancel_open()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        if running_ids:
            pipe = client.pipeline(transaction=False)
            for task_id in running_ids:
                pipe.set(f"sy:task-cancelled:{task_id}", "1", ex=600)  # llm.streams.cancel_key
            pipe.execute()
        purge_queues()
        while time.monotonic() - started < timeout:
            beats = [
                json.loads(raw)
                for queue in POOL_QUEUES
                for raw in client.hgetall(f"sy:pool-heartbeat:{queue}").values()  # kernel.health
            ]
            live = [beat for beat in beats if beat["at"] > time.time() - 5]
            if live and all(beat["at"] > wall + 0.5 and beat["in_flight"] == 0 for beat in live):
                break
            time.sleep(0.1)
        else:
            log(f"  settle: calls still in flight after {timeout:.0f} s")
    finally:
        client.close()
    db.cancel_open()  # a message a worker had reserved before the purge claimed nothing
    purge_queues()
    return time.monotonic() - started


# ---------------------------------------------------------------------------------------
# The stack
# ---------------------------------------------------------------------------------------
@dataclass
class Stack:
    env: dict[str, str]
    web_port: int = field(default_factory=free_port)
    stream_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    role_env: dict[str, dict[str, str]] = field(default_factory=dict)  # what each role was started with
    aborted: threading.Event = field(default_factory=threading.Event)  # set by the connection guard

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self, roles: tuple[str, ...] = ROLES, env: Mapping[str, str] | None = None) -> None:
        """Start ``roles`` (all at once) with ``env`` (default: the stack's), wait until each is ready."""
        for role in roles:
            self._spawn(role, dict(self.env if env is None else env))
        self._wait_ready(roles)

    def _spawn(self, role: str, env: dict[str, str]) -> None:
        self.role_env[role] = dict(env)
        if role in {"web", "stream"}:
            env["PORT"] = str(self.web_port if role == "web" else self.stream_port)
        # Each role names its connections (application_name switchyard-<role>, set by
        # the settings from SWITCHYARD_ROLE), so pg_stat_activity counts them per role.
        log = _SCRATCH / f"{role}-{time.strftime('%H%M%S')}-{next(_SPAWNS)}.log"
        self.logs[role] = log
        # BENCH_STREAM_NICE=19 starves the stream role of CPU the way a loaded machine
        # did (the SSE connect timeouts of docs/benchmarks.md), without adding load.
        nice = os.environ.get("BENCH_STREAM_NICE", "") if role == "stream" else ""
        self.processes[role] = subprocess.Popen(
            [*(["nice", "-n", nice] if nice else []), SWITCHYARD, role],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the "container" we measure
        )

    def restart(self, roles: tuple[str, ...], env: Mapping[str, str]) -> None:
        """Stop ``roles`` and start them again with ``env`` (the others keep running)."""
        self._stop([self.processes.pop(role) for role in roles if role in self.processes])
        self.start(roles, env)

    def _wait_ready(self, roles: tuple[str, ...], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(roles) - {"beat"}
        while waiting:
            for role in list(waiting):
                process = self.processes[role]
                if process.poll() is not None:
                    raise RuntimeError(f"{role} exited {process.returncode}:\n{self.logs[role].read_text()[-3000:]}")
                if role.startswith("worker-"):
                    if b"ready." in self.logs[role].read_bytes():
                        waiting.discard(role)
                    continue
                port = self.web_port if role == "web" else self.stream_port
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        waiting.discard(role)
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s: {', '.join(sorted(waiting))}")
            if waiting:
                time.sleep(0.05)  # a refused connect and a log read cost next to nothing

    def pgid(self, role: str) -> int:
        return self.processes[role].pid  # start_new_session: the leader's pid is the group id

    def stop(self) -> None:
        self._stop(list(self.processes.values()))
        self.processes.clear()

    @staticmethod
    def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        # Open tasks are already cancelled and the queues are purged afterwards, so there is
        # nothing to finish: a worker still waiting on a provider call is killed after 3 s.
        deadline = time.monotonic() + 3
        for process in processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            with contextlib.suppress(ProcessLookupError):  # children the leader left behind
                os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def running(extra: Mapping[str, str], roles: tuple[str, ...] = ROLES) -> Iterator[tuple[Stack, Database]]:
    """A fresh stack with ``extra`` on top of the bench environment; on exit every open
    task is cancelled, the processes stopped and the bench's queues purged."""
    db = Database()
    db.cancel_open()
    purge_queues()
    stack = Stack(env={**base_env(), **extra})
    guard = ConnectionGuard(stack)
    try:
        started = time.monotonic()
        stack.start(roles)
        log(f"  stack up in {time.monotonic() - started:.1f} s")
        guard.start()
        yield stack, db
    finally:
        guard.done.set()
        db.cancel_open()
        purge_queues()
        stack.stop()
        purge_queues()
        db.close()


_SHARED: list[Stack] = []  # the one stack of a quick run, while shared() is open


@contextmanager
def shared() -> Iterator[Stack]:
    """One stack for every scenario run inside (``for_scenario``): the quick run."""
    with running({}) as (stack, _db):
        _SHARED.append(stack)
        try:
            yield stack
        finally:
            _SHARED.clear()


@contextmanager
def for_scenario(latency_ms: int, extra: Mapping[str, str] | None = None) -> Iterator[tuple[Stack, Database, str]]:
    """The stack a scenario runs on, its harness connection, and the directive to end every
    prompt with. Without ``shared()``: a fresh stack with ``FAKE_LLM_LATENCY_MS`` and
    ``extra`` (directive ""). Inside: the shared stack, the roles that read ``extra``
    restarted with it when it differs from what they run with, the latency as
    ``#fake:sleep=<ms>``; on exit ``settle``."""
    extra = dict(extra or {})
    if not _SHARED:
        with running({"FAKE_LLM_LATENCY_MS": str(latency_ms), **extra}) as (stack, db):
            yield stack, db, ""
        return
    stack = _SHARED[0]
    if stack.aborted.is_set():
        raise RuntimeError("the shared stack was stopped by the connection guard")
    wanted = {**stack.env, **extra}
    stale = []
    for role, current in stack.role_env.items():
        changed = {k for k in wanted.keys() | current.keys() if wanted.get(k) != current.get(k)}
        if any(role in ROLES_READING.get(name, ROLES) for name in changed):
            stale.append(role)
    if stale:
        started = time.monotonic()
        stack.restart(tuple(stale), wanted)
        log(f"  restarted {', '.join(stale)} with {extra} in {time.monotonic() - started:.1f} s")
    db = Database()
    try:
        yield stack, db, f"#fake:sleep={latency_ms}"
    finally:
        log(f"  settled in {settle(db):.1f} s")
        db.close()


# The PostgreSQL server is shared with other people's test runs (max_connections 100 on
# the development machine): a stack that opens more than this many is stopped at once.
CONNECTION_GUARD = int(os.environ.get("BENCH_MAX_CONNECTIONS", "80"))
ABORTS: list[str] = []  # why stacks were stopped early, for the report


class ConnectionGuard(threading.Thread):
    def __init__(self, stack: Stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.done = threading.Event()

    def run(self) -> None:
        db = Database()
        try:
            while not self.done.wait(0.25):
                connections = db.connections()
                if connections > CONNECTION_GUARD:
                    reason = f"the stack opened {connections} PostgreSQL connections (guard {CONNECTION_GUARD})"
                    print(f"bench: stopping the stack: {reason}", file=sys.stderr, flush=True)
                    ABORTS.append(reason)
                    self.stack.aborted.set()
                    for process in self.stack.processes.values():
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(process.pid, signal.SIGKILL)
                    return
        finally:
            db.close()
