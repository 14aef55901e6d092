"""Real processes for the pipeline tests: Celery workers per queue (started by
bin/switchyard exactly as production starts them), a uvicorn `stream` server, and a
broker proxy that can be cut.

Workers and servers connect to the pytest-django test database, so these tests use
``transactional_db``: what a test commits is what the workers see.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT, free_port, server_env

HOST = socket.gethostname()


def process_env(**extra: str) -> dict[str, str]:
    return server_env(LOG_LEVEL="INFO", **extra)  # workers log "ready." at INFO


class Worker:
    def __init__(self, queue: str, log_dir: Path, *, root: Path = ROOT, **env: str) -> None:
        self.queue = queue
        self.name = f"{queue}-{uuid.uuid4().hex[:6]}@{HOST}"
        self.log_path = log_dir / f"{self.name}.log"
        # The production command line (bin/switchyard: threads pool, pooled connections),
        # with a small pool unless the test asks for another size.
        command = [str(root / "bin" / "switchyard"), f"worker-{queue}"]  # root: a copy of the tree
        env = {"WORKER_CONCURRENCY": "4", "WORKER_NODE_NAME": self.name, **env}
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, cwd=root, env=process_env(**env), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"ready." in self.log_path.read_bytes():
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        raise TimeoutError(f"worker {self.name} not ready:\n{self.log_path.read_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.process.wait(timeout=5)
        self.log.close()


@pytest.fixture
def start_worker(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(queue: str, **env: str) -> Worker:
        worker = Worker(queue, tmp_path, root=ROOT, **env)
        started.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def start_beat(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """The beat role, with the sweeper every second instead of every 30 s (unless the test
    passes its own SWEEPER_INTERVAL_S)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / "beat.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "beat", "--schedule", str(tmp_path / "beat-schedule")],
            cwd=ROOT,
            env=process_env(**{"SWEEPER_INTERVAL_S": "1", **env}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


@pytest.fixture
def workers(transactional_db: None, start_worker: Callable[..., Worker]) -> dict[str, Worker]:
    """One worker process per queue, as in production."""
    return {queue: start_worker(queue) for queue in ("priority", "default", "low")}


@pytest.fixture
def start_stream_server(transactional_db: None, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """The `stream` role: uvicorn serving the ASGI app (SSE); returns its base URL."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**env: str) -> str:
        port = free_port()
        log_path = tmp_path / f"uvicorn-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "config.asgi:application",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=ROOT,
                env=process_env(**{"SSE_HEARTBEAT_S": "0.5", **env}),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started.append(process)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    return base
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(log_path.read_text()[-3000:])
            time.sleep(0.1)

    yield start
    for process in started:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)


@pytest.fixture
def stream_server(start_stream_server: Callable[..., str]) -> str:
    return start_stream_server()


class TcpProxy:
    """A TCP proxy in front of Redis, so a test can cut the broker and restore it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with suppress(OSError):
            dst.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        if self._server is not None:
            # close() alone leaves a thread blocked in accept() accepting on Linux: a cut
            # Redis would take new connections; shutdown() ends the accept (and the thread).
            with suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
            self._server = None
        with self._lock:
            for conn in self._conns:
                with suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()


def wait_for(predicate: Callable[[], object], timeout: float = 30, interval: float = 0.1) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met in time")
