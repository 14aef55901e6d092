"""kernel.writes.writes_last: deferred writes run at the block's end in one query string,
with BEGIN/COMMIT when the block is the outermost transaction."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext

from kernel import writes
from kernel.models import OutboxEvent

pytestmark = pytest.mark.django_db(transaction=True)

INSERT = (
    "INSERT INTO kernel_outboxevent (event_id, event_type, payload, created_at, attempts, last_error) "
    "VALUES (%s, 'test.writes', '{}', now(), 0, '')"
)


def stored(*event_ids: uuid.UUID) -> int:
    return OutboxEvent.objects.filter(event_id__in=event_ids).count()


def test_outside_a_transaction_the_deferred_writes_are_one_begin_to_commit() -> None:
    first, second = uuid.uuid4(), uuid.uuid4()
    with CaptureQueriesContext(connection) as queries, writes.writes_last(atomic=False):
        assert writes.deferring()
        assert writes.defer(INSERT, [first]) and writes.defer(INSERT, [second])
        assert stored(first, second) == 0  # recorded, not run: the read inside sees nothing
    assert not writes.deferring()
    assert stored(first, second) == 2
    sql = [q["sql"] for q in queries.captured_queries]
    assert sql[-1].startswith("BEGIN; INSERT INTO kernel_outboxevent") and sql[-1].endswith("; COMMIT"), sql
    assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_a_failing_write_rolls_back_the_others_and_leaves_the_connection_usable() -> None:
    first = uuid.uuid4()

    def block() -> None:
        with writes.writes_last(atomic=False):
            writes.defer(INSERT, [first])
            writes.defer(INSERT, [first])  # the unique event id: the second one fails

    with pytest.raises(IntegrityError):
        block()
    assert stored(first) == 0
    assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with writes.writes_last(atomic=False):
        writes.defer(INSERT, [first])
    assert stored(first) == 1


def test_atomic_blocks_run_their_own_statements_first_and_the_deferred_ones_with_the_commit() -> None:
    direct, deferred = uuid.uuid4(), uuid.uuid4()
    with writes.writes_last(atomic=True):
        OutboxEvent.objects.create(event_id=direct, event_type="test.writes", payload={})
        writes.defer(INSERT, [deferred])
        assert stored(direct) == 1 and stored(deferred) == 0
    assert stored(direct, deferred) == 2


def test_nested_in_a_transaction_nothing_commits_before_the_caller() -> None:
    kept, undone = uuid.uuid4(), uuid.uuid4()
    with transaction.atomic():
        with writes.writes_last(atomic=False):
            writes.defer(INSERT, [kept])
        assert connection.connection.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert stored(kept) == 1

        def failing() -> None:
            with writes.writes_last(atomic=False):
                writes.defer(INSERT, [undone])
                writes.defer("SELECT 1 / 0", [])

        with pytest.raises(DatabaseError):
            failing()
        assert stored(kept) == 1  # the caller's transaction is still usable (a savepoint)
    assert stored(kept) == 1 and stored(undone) == 0


def test_an_exception_in_the_block_runs_no_deferred_write() -> None:
    event = uuid.uuid4()

    def block() -> None:
        with writes.writes_last(atomic=False):
            writes.defer(INSERT, [event])
            raise RuntimeError("the caller changed its mind")

    with pytest.raises(RuntimeError):
        block()
    assert stored(event) == 0
    assert not writes.deferring()
    assert not writes.defer(INSERT, [event])  # outside a block: nothing recorded


def test_a_block_inside_another_joins_its_writes() -> None:
    """A worker's finish path charging a task cancelled meanwhile opens a block inside its
    own: the inner block's writes wait for the outer block's end, and its COMMIT."""
    outer, inner = uuid.uuid4(), uuid.uuid4()
    with CaptureQueriesContext(connection) as queries, writes.writes_last(atomic=True):
        writes.defer(INSERT, [outer])
        with writes.writes_last(atomic=True):
            writes.defer(INSERT, [inner])
        assert stored(outer, inner) == 0
    assert stored(outer, inner) == 2
    deferred = [q["sql"] for q in queries.captured_queries if "INSERT INTO kernel_outboxevent" in q["sql"]]
    assert len(deferred) == 1 and deferred[0].count("INSERT INTO kernel_outboxevent") == 2, deferred
    assert deferred[0].endswith("; COMMIT")
