"""Database routing (docs/decisions/read-replicas.md).

With ``DATABASE_REPLICA_URLS`` set, reads that can tolerate a little lag go to a replica,
everything else to the primary:

- Only reads under ``replica_reads()`` (a context manager and decorator: the selectors
  that serve lists and reports) may go to a replica; any other read stays on the primary.
- Every write goes to the primary, and from that write on the rest of the request (or
  Celery task) reads from the primary too: read-your-writes. The router's
  ``db_for_write`` sets the pin; ``RequestIdMiddleware`` and the task signals clear it.
- Inside ``atomic()`` on the primary every read is on the primary.
- Migrations run on the primary only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import wraps
from typing import Any

from django.conf import settings
from django.db import connections, router
from django.db.models import Model

from kernel import writes

_replica_ok: ContextVar[bool] = ContextVar("switchyard_replica_ok", default=False)
_pinned: ContextVar[bool] = ContextVar("switchyard_primary_pinned", default=False)


def replica_alias() -> str:
    replicas: list[str] = getattr(settings, "DATABASE_REPLICAS", [])
    return random.choice(replicas) if replicas else "default"


@contextmanager
def _replica_reads() -> Iterator[None]:
    token = _replica_ok.set(True)
    try:
        yield
    finally:
        _replica_ok.reset(token)


def replica_reads[**P, R](func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a selector whose reads may be served by a replica (lists, reports): it must
    evaluate its querysets before it returns."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _replica_reads():
            return func(*args, **kwargs)

    return wrapper


def primary_pinned() -> bool:
    return _pinned.get()


def reset_primary_pin() -> None:
    """A new request or task: it has written nothing yet (RequestIdMiddleware, task_prerun)."""
    _pinned.set(False)


class ReplicaRouter:
    def db_for_read(self, model: type, **hints: Any) -> str | None:
        if not _replica_ok.get() or _pinned.get() or not getattr(settings, "DATABASE_REPLICAS", []):
            return "default"
        from django.db import connections

        if connections["default"].in_atomic_block:  # a transaction reads what it wrote
            return "default"
        return replica_alias()

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        _pinned.set(True)  # read-your-writes: the rest of this request reads the primary
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


_INSERTS: dict[type[Model], str] = {}


def insert_row(instance: Model) -> None:
    """INSERT ``instance`` (every concrete field, defaults and ``auto_now_add`` applied as
    ``save()`` would) with a statement built once per model.

    For the hottest write paths only (the submit's task row): ``Model.objects.create``
    compiles the same INSERT on every call, which cost a submit more CPU than PostgreSQL
    took to run it (issue 9's profile, docs/decisions/submit-path.md). No signals are
    sent and nothing is read back, so the model must not rely on either (a primary key
    set in Python, no database-generated values). Inside ``kernel.writes.writes_last``
    the INSERT is deferred to the block's end."""
    model = type(instance)
    meta = model._meta
    fields = [field for field in meta.concrete_fields if not field.generated]
    sql = _INSERTS.get(model)
    if sql is None:
        columns = ", ".join(f'"{field.column}"' for field in fields)
        placeholders = ", ".join(["%s"] * len(fields))
        sql = _INSERTS[model] = f'INSERT INTO "{meta.db_table}" ({columns}) VALUES ({placeholders})'  # noqa: S608
    alias = router.db_for_write(model, instance=instance) or "default"
    connection = connections[alias]
    params = [field.get_db_prep_save(field.pre_save(instance, True), connection) for field in fields]
    instance._state.adding = False
    instance._state.db = alias
    if alias == "default" and writes.defer(sql, params):  # inside writes_last: at the block's end
        return
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
