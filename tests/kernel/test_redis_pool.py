"""The cache's Redis pool (every get_redis_connection("default")) is shared by a process's
threads: 300 in worker-default. Past its cap a command waits for a free connection
instead of failing at once (redis-py 8 caps a plain pool at 100 and raises "Too many
connections": a streamed chunk or a status event was lost that way). Real Redis."""

from __future__ import annotations

import threading
import uuid

import redis
from django.conf import settings
from django_redis import get_redis_connection


def test_more_threads_than_connections_all_get_their_command_through() -> None:
    """150 threads each hold a connection for 0.3 s at once (a blocking pop on an empty
    list: the server stays free), with the production pool (not set in the test settings)."""
    options = settings.CACHES["default"]["OPTIONS"]
    cap = options["CONNECTION_POOL_KWARGS"]["max_connections"]
    assert cap == 100
    client = get_redis_connection("default")
    key = f"sy:test-pool:{uuid.uuid4()}"
    threads, start = cap + 50, threading.Barrier(cap + 50)
    results: list[object] = []
    errors: list[BaseException] = []

    def one() -> None:
        start.wait()
        try:
            results.append(client.blpop([key], timeout=0.3))
        except BaseException as exc:  # collected, asserted below
            errors.append(exc)

    workers = [threading.Thread(target=one) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert errors == [] and results == [None] * threads
    assert isinstance(client.connection_pool, redis.BlockingConnectionPool)
