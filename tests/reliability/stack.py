"""The reliability harness: a real stack whose servers the tests own.

PostgreSQL and Redis are throw-away servers started here on free ports (the approach of
scripts/services.py: initdb + pg_ctl as the `postgres` user when root, redis-server with
a config file), so a scenario can stop, kill and restart them without touching the
machine's shared servers. Every role runs through ``bin/switchyard <role>`` with the
production settings module (DEBUG off) and the fake provider, each in its own process
group, so that a scenario can SIGKILL a whole "container".
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis
from httpx import Response

from scripts.services import _pg_bindir, _pg_os_user
from tests.support import ROOT, free_port

SWITCHYARD = str(ROOT / "bin" / "switchyard")
ROLES = ("web", "worker-priority", "worker-default", "worker-low", "beat")
TERMINAL = ("done", "failed", "cancelled")
PASSED_THROUGH = {"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME", "TZ"}


def _as(user: str | None, argv: list[str]) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


def _run(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed: {(result.stderr or result.stdout)[-1500:]}")


class Postgres:
    """A throw-away PostgreSQL on a free TCP port (no unix socket), trust auth."""

    def __init__(self, home: Path) -> None:
        bindir = _pg_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        self.bindir, self.os_user = bindir, _pg_os_user()
        self.home, self.data = home, home / "data"
        self.port = free_port()
        self.role = getpass.getuser()
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
        if self.os_user:
            shutil.chown(home, user=self.os_user)
        initdb = [str(bindir / "initdb"), "-D", str(self.data), "-U", self.role, "--auth=trust", "-E", "UTF8"]
        _run(_as(self.os_user, [*initdb, "--locale=C", "--no-sync"]))
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = ''\n"
                "max_connections = 200\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )

    def url(self, name: str = "switchyard") -> str:
        return f"postgres://{self.role}@127.0.0.1:{self.port}/{name}"

    def _ctl(self, *args: str) -> None:
        _run(_as(self.os_user, [str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]))

    def start(self) -> None:
        self._ctl("-l", str(self.home / "postgres.log"), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        with contextlib.suppress(RuntimeError):
            self._ctl("-m", mode, "-w", "-t", "30", "stop")

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


class Redis:
    """A throw-away Redis on a free port with no persistence: a restart comes back empty."""

    def __init__(self, home: Path) -> None:
        self.home, self.port = home, free_port()
        home.mkdir(parents=True, exist_ok=True)
        self.conf = home / "redis.conf"
        self.conf.write_text(
            f'bind 127.0.0.1\nport {self.port}\ndir "{home}"\ndaemonize yes\nsave ""\nappendonly no\n'
            f'pidfile "{home / "redis.pid"}"\nlogfile "{home / "redis.log"}"\n'
        )

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url(db), socket_connect_timeout=1, socket_timeout=2)

    def start(self) -> None:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        _run([server, str(self.conf)])
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(redis.RedisError):
                if self.client().ping():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer: {(self.home / 'redis.log').read_text()[-1500:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SHUTDOWN NOSAVE: what is in memory (queued messages, caches) is gone."""
        with contextlib.suppress(redis.RedisError):
            self.client().shutdown(nosave=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.client().ping()
            except redis.RedisError:
                return
            time.sleep(0.05)


@dataclass
class Servers:
    postgres: Postgres
    redis: Redis
    scratch: Path
    database: str = "switchyard"

    @classmethod
    def start(cls) -> Servers:
        scratch = Path(tempfile.mkdtemp(prefix="sy-reliability-"))
        scratch.chmod(0o755)
        servers = cls(Postgres(scratch / "pg"), Redis(scratch / "redis"), scratch)
        try:
            servers.postgres.start()
            servers.postgres.create_database(servers.database)
            servers.redis.start()
        except BaseException:
            servers.stop()  # nothing left running when one of them cannot start
            raise
        return servers

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop("immediate")
        if os.environ.get("RELIABILITY_KEEP_LOGS"):  # the processes' logs, to read after a failure
            print(f"reliability: logs kept in {self.scratch}")
        else:
            shutil.rmtree(self.scratch, ignore_errors=True)

    @property
    def database_url(self) -> str:
        return self.postgres.url(self.database)


def base_env(servers: Servers) -> dict[str, str]:
    """Production settings (DEBUG off, JSON logs, production limits), the fake provider,
    the servers of this harness. Scenarios add their own values on top."""
    # Only the basics of this shell: the test process's own environment holds the test
    # settings (config.settings_test writes them into os.environ), which must not leak in.
    env = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH}
    env.update(
        PYTHONPATH=f"{ROOT / 'src'}:{ROOT}",
        DJANGO_SETTINGS_MODULE="config.settings",
        DEBUG="false",
        SECRET_KEY="reliability-secret-key-reliability-secret-key-0123456789",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=servers.database_url,
        REDIS_URL=servers.redis.url(1),
        CELERY_BROKER_URL=servers.redis.url(0),
        CACHE_KEY_PREFIX="sy",
        LLM_PROVIDER="fake",
        WEBHOOK_SIGNING_SECRETS="reliability-webhook-secret-reliability-0123456789",
        METRICS_TOKEN="reliability-metrics-token-reliability-0123456789",
        STATIC_ROOT=str(servers.scratch / "static"),
        CELERY_BEAT_SCHEDULE_FILENAME=str(servers.scratch / "celerybeat-schedule"),
        LOG_LEVEL="INFO",  # the workers' "ready." line
        WEB_WORKERS="2",
        WEB_THREADS="8",
        WORKER_PRIORITY_CONCURRENCY="8",
        WORKER_DEFAULT_CONCURRENCY="50",
        WORKER_LOW_CONCURRENCY="8",
        PYTHONUNBUFFERED="1",
    )
    return env


def migrate(servers: Servers) -> None:
    env = base_env(servers)
    subprocess.run([SWITCHYARD, "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)


def create_api_key(servers: Servers, name: str) -> str:
    """A new organization with one API key, made by the production command."""
    command = [SWITCHYARD, "manage", "create_api_key", f"{name}@reliability.test", "--org", name]
    result = subprocess.run(command, cwd=ROOT, env=base_env(servers), check=True, capture_output=True, text=True)
    return result.stdout.strip().splitlines()[-1]


class Database:
    """The harness's own autocommit connection to the stack's database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except psycopg.OperationalError:  # the server was restarted under us: reconnect once
            self.conn = psycopg.connect(self.url, autocommit=True)
            return self.conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, *params: Any) -> Any:
        rows = self.rows(sql, *params)
        return rows[0][0] if rows else None

    def statuses(self, ids: list[str]) -> dict[str, int]:
        return dict(self.rows("SELECT status, count(*) FROM llm_aitask WHERE id = ANY(%s::uuid[]) GROUP BY 1", ids))

    def cancel_open(self) -> None:
        """Leave no open work behind for the next scenario's gate."""
        self.rows(
            "UPDATE llm_aitask SET status = 'cancelled', completed_at = now(), lease_token = NULL, "
            "lease_expires_at = NULL WHERE status IN ('pending', 'processing') RETURNING id"
        )

    def close(self) -> None:
        self.conn.close()


@dataclass
class Stack:
    servers: Servers
    env: dict[str, str]
    web_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def log(self, role: str) -> str:
        return self.logs[role].read_text(errors="replace")

    def start(self, *roles: str, **extra: str) -> None:
        for role in roles or ROLES:
            # Like honcho and the image: each process its own PORT (a worker serves its
            # metrics there), the web role the one the tests call.
            port = self.web_port if role == "web" else free_port()
            env = {**self.env, **extra, "PORT": str(port)}
            self.restarts[role] = self.restarts.get(role, -1) + 1
            log = self.servers.scratch / f"{role}-{self.web_port}-{self.restarts[role]}.log"
            self.logs[role] = log
            with log.open("wb") as out:
                self.processes[role] = subprocess.Popen(
                    [SWITCHYARD, role], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        self.wait_ready(*(roles or ROLES))

    def wait_ready(self, *roles: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        waiting = set(roles) - {"beat"}
        while waiting:
            for role in list(waiting):
                process = self.processes[role]
                if process.poll() is not None:
                    raise RuntimeError(f"{role} exited {process.returncode}:\n{self.log(role)[-3000:]}")
                if role.startswith("worker-"):
                    if "ready." in self.log(role):
                        waiting.discard(role)
                    continue
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{self.web}/healthz", timeout=1).status_code == 200:
                        waiting.discard(role)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f} s: {', '.join(sorted(waiting))}")
            time.sleep(0.2)

    def signal(self, role: str, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.processes[role].pid, sig)  # start_new_session: pid == process group

    def kill(self, role: str) -> None:
        """SIGKILL the role's whole process group, as an OOM kill or a lost host would."""
        self.signal(role, signal.SIGKILL)
        self.processes[role].wait(timeout=10)

    def stop_role(self, role: str) -> None:
        """SIGTERM: the role's warm shutdown, as a deploy stops it."""
        self.signal(role, signal.SIGTERM)
        try:
            self.processes[role].wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill(role)

    def alive(self, role: str) -> bool:
        return self.processes[role].poll() is None

    def stop(self) -> None:
        for role in self.processes:
            self.signal(role, signal.SIGCONT)
            self.signal(role, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for role, process in self.processes.items():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.signal(role, signal.SIGKILL)
                process.wait(timeout=10)
            self.signal(role, signal.SIGKILL)  # children the leader left behind

    def submit(self, key: str, prompts: Iterable[str], *, threads: int = 8, timeout: float = 30) -> list[Response]:
        """POST each prompt (max_tokens 40, cache off) from a few client threads."""
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=self.web, headers=headers, timeout=timeout) as client:

            def post(prompt: str) -> Response:
                return client.post("/api/v1/ai-tasks/", json={"prompt": prompt, "max_tokens": 40, "cache": False})

            with ThreadPoolExecutor(max_workers=threads) as pool:
                return list(pool.map(post, prompts))

    def readyz(self) -> int:
        try:
            return httpx.get(f"{self.web}/readyz", timeout=8).status_code
        except httpx.TransportError:
            return 0


def accepted_ids(responses: list[Response]) -> list[str]:
    bad = [(r.status_code, r.text[:300]) for r in responses if r.status_code != 202]
    assert not bad, f"{len(bad)} submissions were not accepted: {bad[:3]}"
    return [str(r.json()["id"]) for r in responses]


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.5, what: str = "") -> float:
    """Seconds it took for ``predicate`` to hold; TimeoutError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what or 'condition'} not met within {timeout:.0f} s")
        time.sleep(interval)
    return time.monotonic() - started


@contextlib.contextmanager
def running(servers: Servers, **extra: str) -> Iterator[tuple[Stack, Database]]:
    """A fresh set of processes over the shared servers; on exit open tasks are cancelled,
    processes stopped and Redis emptied, so the next scenario starts clean."""
    servers.redis.client().flushall()
    db = Database(servers.database_url)
    db.cancel_open()
    stack = Stack(servers=servers, env={**base_env(servers), **extra})
    try:
        stack.start()
        yield stack, db
    finally:
        stack.stop()
        db.cancel_open()
        with contextlib.suppress(redis.RedisError):
            servers.redis.client().flushall()
        db.close()
