"""llm.streams.AsyncStreamReader against the real Redis: the readers of one event loop
share one blocking connection and a small pool (the stream role's 1,000 open SSE
responses were 1,000 Redis connections, each opened as its request started, and the
connects that a starved loop did not finish in 2 s were 503s; bench/sse.py)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from django_redis import get_redis_connection

from llm import streams
from llm.streams import AsyncStreamReader, publish_delta

READERS = 120  # far more than the pool's connections


def _sse_connections() -> dict[str, int]:
    """This test database's connections the readers opened, by client name."""
    client = get_redis_connection("default")
    db = client.connection_pool.connection_kwargs.get("db", 0)
    counts: dict[str, int] = {}
    for entry in client.client_list():
        if entry.get("name", "").startswith("sy-sse") and int(entry.get("db", -1)) == db:
            counts[entry["name"]] = counts.get(entry["name"], 0) + 1
    return counts


def _gone() -> bool:
    """No reader connection left; Redis lists a closed one until it has read the close."""
    for _ in range(50):
        if not _sse_connections():
            return True
        time.sleep(0.1)
    return False


def test_readers_of_one_loop_share_one_blocking_connection_and_a_small_pool() -> None:
    assert READERS > streams.COMMAND_CONNECTIONS
    task_ids = [str(uuid.uuid4()) for _ in range(READERS)]
    seen: dict[str, int] = {}

    async def run() -> list[list[streams.StreamEvent]]:
        readers = [AsyncStreamReader(task_id, block_s=30) for task_id in task_ids]
        try:
            # More commands at once than the pool has connections: they wait, none fails.
            cursors = await asyncio.gather(*(reader.last_id() for reader in readers))
            waiting = [asyncio.create_task(r.read(c)) for r, c in zip(readers, cursors, strict=True)]
            while _sse_connections().get("sy-sse-hub", 0) == 0:  # the hub's XREAD is running
                await asyncio.sleep(0.05)
            seen.update(_sse_connections())
            for task_id in task_ids:  # each reader's own stream gets one event
                await asyncio.to_thread(publish_delta, task_id, f"for {task_id}")
            return await asyncio.wait_for(asyncio.gather(*waiting), 30)
        finally:
            for reader in readers:
                await reader.close()

    results = async_to_sync(run)()
    assert seen["sy-sse-hub"] == 1
    assert seen.get("sy-sse", 0) <= streams.COMMAND_CONNECTIONS
    assert [[event.data["text"] for event in events] for events in results] == [[f"for {t}"] for t in task_ids]
    assert _gone(), "the last reader's close() closes the connections"


def test_a_reader_gets_only_what_follows_its_cursor_while_another_reads_the_same_stream() -> None:
    task_id = str(uuid.uuid4())
    first = publish_delta(task_id, "one")
    assert first is not None

    async def run() -> tuple[list[str], list[str], list[str]]:
        early, late = AsyncStreamReader(task_id, block_s=5), AsyncStreamReader(task_id, block_s=5)
        try:
            from_start = [event.data["text"] for event in await early.read("0-0")]
            pending = asyncio.create_task(late.read(first))
            await asyncio.to_thread(publish_delta, task_id, "two")
            after_first = [event.data["text"] for event in await pending]
            rest = [event.data["text"] for event in await early.read(first)]
            return from_start, after_first, rest
        finally:
            await early.close()
            await late.close()

    from_start, after_first, rest = async_to_sync(run)()
    assert from_start == ["one"]
    assert after_first == ["two"]
    assert rest == ["two"]


def test_a_read_with_nothing_new_returns_empty_after_its_wait() -> None:
    async def run() -> list[streams.StreamEvent]:
        reader = AsyncStreamReader(str(uuid.uuid4()), block_s=0.2)
        try:
            return await reader.read(await reader.last_id())
        finally:
            await reader.close()

    assert async_to_sync(run)() == []


@pytest.fixture(autouse=True)
def _no_leftover_hub() -> None:
    assert _gone(), "another test left stream connections open"
