"""Database routing. Writes and ordinary reads go to the primary (read-your-writes for
the API); code that can tolerate replica lag (reports, exports) asks for a replica
explicitly with ``replica_alias()``."""

from __future__ import annotations

import random
from typing import Any

from django.conf import settings


def replica_alias() -> str:
    replicas: list[str] = getattr(settings, "DATABASE_REPLICAS", [])
    return random.choice(replicas) if replicas else "default"


class ReplicaRouter:
    def db_for_read(self, model: type, **hints: Any) -> str | None:
        return None

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return True

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None, **hints: Any) -> bool:
        return db == "default"


def release_connection(alias: str = "default") -> None:
    """Hand this thread's connection back before a slow wait (a provider call), so hundreds
    of waiting threads share a few connections: to psycopg's pool, or to PgBouncer
    (``DATABASE_POOLED``: no persistent connections, a reconnect is cheap). A persistent
    direct connection is kept (a reconnect costs ~11 ms), and so is one inside a
    transaction."""
    from django.db import connections

    conn = connections[alias]
    pooled = bool(conn.settings_dict.get("OPTIONS", {}).get("pool")) or conn.settings_dict.get("CONN_MAX_AGE") == 0
    if conn.in_atomic_block or not pooled:
        return
    conn.close()
