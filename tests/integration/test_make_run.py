"""`make run` (scripts/run.sh) as a user runs it, outside Docker.

The script runs with its own database, Redis databases, ports and .local directory. The
test waits until web is ready and the printed curl line works, then stops the script the
way a user does (Ctrl-C is SIGINT, `kill` is SIGTERM) and checks that every process it
started is gone. The throw-away servers of scripts/services.py are tested on their own.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from glob import glob
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from tests.integration.test_entrypoint import (
    clean_env,
    database_url,
    drop_database,
    flush_redis,
    http_status,
    isolated_redis_urls,
    wait_until,
)
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
CURL_ME = re.compile(r'curl -H "Authorization: Bearer (\S+)" (http://127\.0\.0\.1:\d+)/api/v1/me/')
READY = re.compile(r"\b(priority|default|low)@\S+ ready\.")

Proc = tuple[int, int]  # (pid, start time): a pid alone may be reused


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, start time, state) of a live process, None when gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    state, ppid, start = fields[0], int(fields[1]), int(fields[19])
    return None if state in {"Z", "X"} else (ppid, start, state)


def descendants(root: int) -> set[Proc]:
    children: dict[int, list[Proc]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))):
            children.setdefault(stat[0], []).append((int(entry), stat[1]))
    found: set[Proc] = set()
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child[0])
    return found


def alive(procs: set[Proc]) -> set[Proc]:
    return {(pid, start) for pid, start in procs if (stat := _stat(pid)) and stat[1] == start}


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return "?"


def free_port_pair() -> int:
    """A port p with p + 100 also free: honcho puts web on p and stream on p + 100."""
    for _ in range(50):
        port = free_port()
        if port + 100 < 65536:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port + 100))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port pair")


def pools_and_beat_up(log_path: Path) -> bool:
    log = log_path.read_text(errors="replace")
    return {m.group(1) for m in READY.finditer(log)} == {"priority", "default", "low"} and "beat: Starting" in log


@pytest.fixture
def run_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    name = f"switchyard_run_{uuid.uuid4().hex[:8]}"
    cache_url, broker_url = isolated_redis_urls()
    yield clean_env(
        PORT=str(free_port_pair()),
        DATABASE_URL=database_url(name),
        REDIS_URL=cache_url,
        CELERY_BROKER_URL=broker_url,
        CACHE_KEY_PREFIX=f"run{uuid.uuid4().hex[:6]}",
        SWITCHYARD_LOCAL_DIR=str(tmp_path / "local"),
    )
    drop_database(name)
    flush_redis(broker_url)


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_make_run_serves_the_printed_curl_line_and_stops_every_process(
    run_env: dict[str, str], tmp_path: Path, stop_signal: signal.Signals
) -> None:
    log_path = tmp_path / "run.log"
    with log_path.open("wb") as log:
        run = subprocess.Popen(
            [str(ROOT / "scripts" / "run.sh")],
            cwd=tmp_path,
            env=run_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: set[Proc] = set()
    try:
        web = f"http://127.0.0.1:{run_env['PORT']}"
        stream = f"http://127.0.0.1:{int(run_env['PORT']) + 100}"
        wait_until(lambda: http_status(f"{web}/readyz") == 200, timeout=150, what="web /readyz", log=log_path)
        wait_until(lambda: http_status(f"{stream}/healthz") == 200, timeout=60, what="stream", log=log_path)
        output = log_path.read_text(errors="replace")
        wait_until(lambda: pools_and_beat_up(log_path), timeout=60, what="worker pools and beat", log=log_path)

        match = CURL_ME.search(output)
        assert match, output
        key, base = match.groups()
        assert base == web
        me = httpx.get(f"{base}/api/v1/me/", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert me.status_code == 200, me.text
        assert me.json()["organization_name"] == "Demo"
        assert '"prompt": "Write a haiku about switchyards"' in output
        assert f"{web}/api/v1/ai-tasks/" in output
        # /metrics only with the token make run made (kept, mode 600, under .local/).
        secrets_file = Path(run_env["SWITCHYARD_LOCAL_DIR"]) / "secrets"
        assert secrets_file.stat().st_mode & 0o777 == 0o600
        token = re.search(r"METRICS_TOKEN=\$\{METRICS_TOKEN:-([^}]+)\}", secrets_file.read_text())
        assert token, secrets_file.read_text()
        assert http_status(f"{web}/metrics") == 401
        scrape = httpx.get(f"{web}/metrics", headers={"Authorization": f"Bearer {token.group(1)}"}, timeout=5)
        assert scrape.status_code == 200
        assert "switchyard_queue_depth" in scrape.text  # read from PostgreSQL at scrape time
        # Each worker pool serves its own metrics on the PORT honcho gives it (base + 100 x n).
        for offset in (200, 300, 400):
            worker_metrics = f"http://127.0.0.1:{int(run_env['PORT']) + offset}/metrics"
            assert http_status(worker_metrics) == 200, worker_metrics
        assert token.group(1) not in output  # the token is not printed

        started = descendants(run.pid)
        assert len(started) >= 6, [cmdline(pid) for pid, _ in started]
        os.killpg(run.pid, stop_signal)
        run.wait(timeout=60)
        wait_until(lambda: not alive(started), timeout=15, what="every child process gone", log=log_path)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=10)
        leftovers = alive(started)
        for pid, _ in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, [cmdline(pid) for pid, _ in leftovers]


# --- throw-away PostgreSQL and Redis (scripts/services.py) ------------------------------------


def _can_start_throwaway_servers() -> bool:
    has_postgres = bool(glob("/usr/lib/postgresql/*/bin/initdb")) or shutil.which("initdb") is not None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
    return has_postgres and shutil.which("redis-server") is not None


def services(command: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "services.py"), command, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def read_env_file(path: Path) -> dict[str, str]:
    """`export NAME=value` lines, as written by services.py (values shell-quoted)."""
    assignments = (shlex.split(line.removeprefix("export "))[0] for line in path.read_text().splitlines())
    return dict(assignment.split("=", 1) for assignment in assignments)


@pytest.mark.slow
@pytest.mark.skipif(not _can_start_throwaway_servers(), reason="PostgreSQL or Redis server binaries not installed")
@pytest.mark.parametrize("host", ["127.0.0.1", ""], ids=["tcp", "unix-socket"])
def test_ensure_serves_the_urls_with_throwaway_servers_and_stop_stops_them(host: str) -> None:
    # Not under pytest's tmp_path: as root, PostgreSQL runs as `postgres`, which must be
    # able to reach the data directory.
    local = Path(tempfile.mkdtemp(prefix="switchyard-local-"))
    local.chmod(0o755)
    env = clean_env(
        SWITCHYARD_LOCAL_DIR=str(local),
        # Nothing answers on these ports; without a host libpq uses its default socket directory,
        # which is how the default DATABASE_URL (postgres:///switchyard) reaches the server.
        DATABASE_URL=f"postgres://{host}:{free_port()}/switchyard_demo",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/2",
    )
    try:
        first = services("ensure", env, "--env-file", str(local / "env"))
        assert first.returncode == 0, first.stderr
        assert "started a throw-away PostgreSQL" in first.stdout
        assert "started a throw-away Redis" in first.stdout
        urls = read_env_file(local / "env")
        # The URLs asked for are served as they are, so `make test` needs no new settings.
        assert urls == {"DATABASE_URL": env["DATABASE_URL"], "REDIS_URL": env["REDIS_URL"]}, first.stdout
        with psycopg.connect(urls["DATABASE_URL"]) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("switchyard_demo",)
        assert redis.Redis.from_url(urls["REDIS_URL"]).ping()

        again = services("ensure", env)
        assert again.returncode == 0, again.stderr
        assert "started" not in again.stdout, "a second run reuses the running servers"
    finally:
        stopped = services("stop", env)
        shutil.rmtree(local, ignore_errors=True)
    assert stopped.returncode == 0, stopped.stderr
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(urls["DATABASE_URL"], connect_timeout=2)
