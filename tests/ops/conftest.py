"""The ops tests start the real roles: workers through the pipeline suite's fixture, web
through bin/switchyard (gunicorn, as production starts it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from tests.pipeline.conftest import process_env, start_stream_server, start_worker
from tests.support import ROOT, free_port

__all__ = ["start_stream_server", "start_web", "start_worker"]

# A replica alias as DATABASE_REPLICA_URLS makes one (a test mirror of the primary), for
# the router tests, which point it at a second database of their own. DATABASE_REPLICAS
# stays empty, so nothing else routes to it.
REPLICA_ALIAS = "replica_0"
if REPLICA_ALIAS not in settings.DATABASES:
    settings.DATABASES[REPLICA_ALIAS] = {**settings.DATABASES["default"], "TEST": {"MIRROR": "default"}}


@pytest.fixture
def start_web(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """`bin/switchyard web`: gunicorn with WEB_WORKERS workers; returns the base URL."""
    started: list[subprocess.Popen[bytes]] = []

    def start(workers: int = 2, **env: str) -> str:
        port = free_port()
        log_path = tmp_path / f"web-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [str(ROOT / "bin" / "switchyard"), "web"],
                cwd=ROOT,
                env=process_env(PORT=str(port), WEB_WORKERS=str(workers), WEB_THREADS="2", **env),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with suppress(httpx.TransportError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return base
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(log_path.read_text()[-3000:])
            time.sleep(0.2)

    yield start
    for process in started:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
