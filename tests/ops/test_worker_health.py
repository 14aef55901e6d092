"""`manage.py worker_health --queue Q` against a real worker pool: passes while it runs,
fails when it is stopped (SIGSTOP: a stuck process whose keeper no longer ticks) and
when it is dead (SIGKILL); bin/switchyard healthcheck (the image's HEALTHCHECK) uses it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.pipeline.conftest import Worker
from tests.support import ROOT, server_env

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def health(queue: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / "bin" / "switchyard"), "manage", "worker_health", "--queue", queue, *args],
        cwd=ROOT,
        env=server_env(LOG_LEVEL="WARNING", **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def until(code: int, queue: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + timeout
    while True:
        result = health(queue, *args)
        if result.returncode == code or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def test_fails_without_a_pool_passes_while_it_runs_fails_when_stopped_or_dead(
    start_worker: Callable[..., Worker], tmp_path: Path
) -> None:
    assert health("default").returncode == 1  # nobody serves the queue yet
    worker = start_worker("default")
    alive = until(0, "default")  # the production default max age (15 s)
    assert alive.returncode == 0, alive.stderr
    assert "alive" in alive.stdout
    assert until(0, "default", "--here").returncode == 0
    assert health("low").returncode == 1  # another queue's pool says nothing about this one

    role_file = tmp_path / "role"
    role_file.write_text("worker-default\n")
    probe = subprocess.run(
        [str(ROOT / "bin" / "switchyard"), "healthcheck"],
        env=server_env(LOG_LEVEL="WARNING", SWITCHYARD_ROLE_FILE=str(role_file)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr

    worker.kill(signal.SIGSTOP)  # stuck: nothing in the process runs, the keeper neither
    try:
        stuck = until(1, "default", "--max-age", "3")
        assert stuck.returncode == 1, stuck.stdout + stuck.stderr
        assert "STALE" in stuck.stdout
    finally:
        worker.kill(signal.SIGCONT)
    assert until(0, "default", "--max-age", "3").returncode == 0  # it ticks again

    worker.kill(signal.SIGKILL)
    worker.process.wait(timeout=10)
    dead = until(1, "default", "--max-age", "3")
    assert dead.returncode == 1, dead.stdout + dead.stderr


def test_unreadable_heartbeats_are_not_healthy(transactional_db: None) -> None:
    result = health("default", REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 2, result.stdout + result.stderr
