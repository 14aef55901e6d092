"""Writes that run last, sent with their COMMIT (docs/decisions/submit-path.md).

A transaction that locks a hot row (the organization's budget row: every submit and every
settlement of the organization updates it) keeps it locked until COMMIT. Issue 9's bench
found the lock holder most of the time "idle in transaction": its thread, short of CPU or
of the GIL, had not sent the next statement yet, and every other writer of the row waited.
And each round trip of a request thread gives the GIL back and waits to take it again.

Inside ``writes_last`` a write passed to ``defer`` is recorded, not run. At the end of the
block the recorded writes run in order (those deferred with ``last=True`` after all the
others: the writes that lock a hot row), in one query string, with the COMMIT when the
block is the outermost transaction: the rows they lock stay locked for the server's
execution of those statements only, and the request makes one round trip for all of them.

- ``writes_last(atomic=True)``: the block is a transaction (``transaction.atomic``); what
  it runs directly is part of it, the deferred writes come last.
- ``writes_last(atomic=False)``: the block opens no transaction; what it runs directly
  (reads) runs on its own, and the deferred writes are the whole transaction:
  ``BEGIN; ...; COMMIT`` in one query string. Use it only where every write of the block
  is deferred. ``transaction.on_commit`` inside the block would run at once: register
  after it.

Nested in a transaction of the caller (a chat turn submits inside its own), the writes run
at the end of the block without COMMIT and stay locked until the outer COMMIT; nested in
another ``writes_last`` block, they join its writes. A deferred write is not undone by
rolling back to a savepoint taken inside the block: code that catches a failure inside
the block must not have deferred writes that depend on what failed. A failing
deferred write fails the whole block: it is rolled back and the error raised, the
statements' own DatabaseError (a caller can turn a SQLSTATE of its own into its error).

Only the client-side binding cursor (Django's default with psycopg) takes several
statements in one query; with ``server_side_binding`` they run one by one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import DatabaseError, connection, transaction

Statement = tuple[str, list[Any]]


class _Pending:
    def __init__(self) -> None:
        self.writes: list[Statement] = []
        self.last: list[Statement] = []  # the hot rows' writes, after every other

    def statements(self) -> list[Statement]:
        return self.writes + self.last


_pending: ContextVar[_Pending | None] = ContextVar("kernel_writes_last", default=None)


def defer(sql: str, params: list[Any], *, last: bool = False) -> bool:
    """Record a write for the end of the current ``writes_last`` block; False (nothing
    recorded: run it yourself) outside one. ``last``: after every write recorded without
    it, whatever the order of the calls (the writes that lock a hot row)."""
    pending = _pending.get()
    if pending is None:
        return False
    (pending.last if last else pending.writes).append((sql, list(params)))
    return True


def deferring() -> bool:
    """Whether writes are being recorded (a ``writes_last`` block is open)."""
    return _pending.get() is not None


@contextmanager
def writes_last(*, atomic: bool) -> Iterator[None]:
    if _pending.get() is not None:
        # Inside another block (a worker's finish path charging a task cancelled meanwhile):
        # its writes join the outer block's, which sends them all with its COMMIT.
        with transaction.atomic():
            yield
        return
    outermost = not connection.in_atomic_block
    pending = _Pending()
    token = _pending.set(pending)
    if atomic or not outermost:
        # A transaction of its own (or a savepoint in the caller's, so a failure leaves
        # the caller's transaction usable); the writes come last, with COMMIT if outermost.
        with transaction.atomic():
            try:
                yield
            finally:
                _pending.reset(token)
            _run(pending.statements(), begin=False, commit=outermost)
        return
    try:
        yield
    finally:
        _pending.reset(token)
    try:
        _run(pending.statements(), begin=True, commit=True)
    except Exception:
        # The failed statement skipped the rest of the query, COMMIT included: the
        # session is inside an aborted transaction until it is rolled back.
        with contextlib.suppress(DatabaseError), connection.cursor() as cursor:  # keep the first error
            cursor.execute("ROLLBACK")
        raise


def _run(statements: list[Statement], *, begin: bool, commit: bool) -> None:
    if not statements:
        return
    with connection.cursor() as cursor:
        if connection.settings_dict["OPTIONS"].get("server_side_binding"):
            _one_by_one(cursor, statements, begin=begin, commit=commit)
            return
        sql = "; ".join(statement for statement, _ in statements)
        params = [param for _, values in statements for param in values]
        if begin:
            sql = f"BEGIN; {sql}"
        if commit:
            # Django's own COMMIT when an atomic block ends finds the transaction closed
            # (psycopg asks the server) and sends nothing.
            sql = f"{sql}; COMMIT"
        cursor.execute(sql, params)


def _one_by_one(cursor: Any, statements: list[Statement], *, begin: bool, commit: bool) -> None:
    """Server-side binding takes one statement per query: the writes run one by one (and
    stay locked until COMMIT, one round trip after the last)."""
    if begin:
        cursor.execute("BEGIN")
    for statement, values in statements:
        cursor.execute(statement, values)
    if begin and commit:
        cursor.execute("COMMIT")
