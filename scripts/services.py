"""Local service bootstrap for `make run` and `make test`.

``ensure``: PostgreSQL and Redis must answer at DATABASE_URL / REDIS_URL and the
database must exist (it is created when missing). Nothing here runs in production.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlparse

import psycopg
import redis

DEFAULT_DATABASE_URL = "postgres:///switchyard"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _conninfo(url: str, dbname: str | None = None) -> str:
    parts = urlparse(url)
    fields = {
        "host": parts.hostname or os.environ.get("PGHOST", ""),
        "port": str(parts.port or ""),
        "user": parts.username or "",
        "password": parts.password or "",
        "dbname": dbname if dbname is not None else (parts.path.lstrip("/") or "switchyard"),
        "connect_timeout": "3",
    }
    return " ".join(f"{k}={v}" for k, v in fields.items() if v)


def ensure_postgres(url: str) -> str | None:
    name = urlparse(url).path.lstrip("/") or "switchyard"
    try:
        with psycopg.connect(_conninfo(url), autocommit=True):
            return None
    except psycopg.OperationalError as exc:
        if f'database "{name}" does not exist' not in str(exc):
            return f"PostgreSQL is not reachable at DATABASE_URL={url}: {str(exc).strip().splitlines()[0]}"
    with psycopg.connect(_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # name comes from our own DATABASE_URL
    print(f"created database {name}")
    return None


def ensure_redis(url: str) -> str | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return f"Redis is not reachable at REDIS_URL={url}: {exc}"
    return None


def main(argv: list[str]) -> int:
    if argv[1:2] != ["ensure"]:
        print("usage: services.py ensure", file=sys.stderr)
        return 2
    problems = [
        problem
        for problem in (
            ensure_postgres(os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL)),
            ensure_redis(os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)),
        )
        if problem
    ]
    for problem in problems:
        print(f"switchyard: {problem}", file=sys.stderr)
    if problems:
        print("Install PostgreSQL and Redis (apt-get install postgresql redis-server) or run `docker compose up`.",
              file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
