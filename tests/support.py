"""Helpers for tests that start real processes (servers, workers) next to the suite."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import quote

from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    """The test database as this process reaches it: the same host and port (PgBouncer
    under `make test-pgbouncer`), the test database's name."""
    params = connection.settings_dict
    host, port, user, password = (params.get(k) or "" for k in ("HOST", "PORT", "USER", "PASSWORD"))
    if not host or str(host).startswith("/"):
        return f"postgres:///{params['NAME']}"  # the local socket, as before
    auth = f"{quote(str(user), safe='')}{':' + quote(str(password), safe='') if password else ''}@" if user else ""
    return f"postgres://{auth}{host}{':' + str(port) if port else ''}/{params['NAME']}"


def server_env(**extra: str) -> dict[str, str]:
    """The environment for a process that must see what this test sees: the test
    database, this session's Redis databases and the test settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") or k == "PYTEST_XDIST_WORKER"}
    env.pop("SWITCHYARD_ASGI", None)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings_test",
        PYTHONPATH=f"{ROOT / 'src'}:{ROOT}",
        DATABASE_URL=database_url(),
        REDIS_URL=settings.REDIS_URL,
        CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
        CACHE_KEY_PREFIX=settings.CACHES["default"]["KEY_PREFIX"],
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env
