"""Scenario 6: a message that outlives the broker's visibility timeout runs its task once.

With acks_late, Redis keeps a delivered message in its ``unacked`` set until the worker
acks it; a message older than ``visibility_timeout`` is put back in its queue by any
worker that sweeps the set (every worker does at start, then every ~100 s), even while
the first delivery is still being worked on. The settings keep every *call* shorter than
the visibility timeout (LLM_HTTP_TIMEOUT < TASK_SOFT_TIME_LIMIT < TASK_TIME_LIMIT <
CELERY_VISIBILITY_TIMEOUT, config.env), so what outlives it is a task that could not start:
here its row is locked (a stalled database) while another pool restarts, as a deploy does,
and redelivers the message. The second delivery must find nothing to claim.
"""

from __future__ import annotations

import signal
import time
import uuid

import psycopg
import pytest

from tests.reliability.invariants import assert_exactly_once, attempts_by_status, terminal
from tests.reliability.stack import Servers, accepted_ids, running, wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.reliability_fast]

SHORT_VISIBILITY = {
    "CELERY_VISIBILITY_TIMEOUT": "6",
    "LLM_HTTP_TIMEOUT": "2",
    "TASK_SOFT_TIME_LIMIT": "3",
    "TASK_TIME_LIMIT": "4",
    "LLM_SLOT_WAIT_S": "1",
    "FAKE_LLM_LATENCY_MS": "300",
    "WORKER_DEFAULT_CONCURRENCY": "4",
}


def test_a_message_redelivered_after_the_visibility_timeout_runs_its_task_once(
    servers: Servers, api_key: str, measured: list[str]
) -> None:
    with running(servers, **SHORT_VISIBILITY) as (stack, db):
        broker = servers.redis.client(0)
        # The pool stops reading for a moment, so the row can be locked before its claim.
        stack.signal("worker-default", signal.SIGSTOP)
        [task_id] = accepted_ids(stack.submit(api_key, [f"visibility {uuid.uuid4()}"]))
        with psycopg.connect(servers.database_url) as lock:
            lock.execute("SELECT id FROM llm_aitask WHERE id = %s FOR UPDATE", [task_id])
            stack.signal("worker-default", signal.SIGCONT)
            # Its message, among any others the pool holds (events relayed from the shared
            # database's outbox by earlier scenarios go to the same queue).
            wait_until(
                lambda: any(str(task_id).encode() in raw for raw in broker.hvals("unacked")), 10, 0.1, "the delivery"
            )
            delivered = time.monotonic()
            time.sleep(6.5)  # older than the visibility timeout now
            stack.stop_role("worker-low")
            stack.start("worker-low")  # its first sweep of ``unacked`` puts the message back
            wait_until(lambda: stack.log("worker-default").count(f"{task_id}] received") >= 2, 15, 0.2, "redelivery")
            redelivered = time.monotonic() - delivered
            lock.rollback()
        wait_until(lambda: terminal(db, [task_id]), 30, 0.2, "the task to end")
        assert attempts_by_status(db, [task_id]) == {("done", 1, None): 1}
        assert_exactly_once(db, [task_id], timeout=30)
        assert "task_not_claimed" in stack.log("worker-default")
        measured.append(f"visibility: message redelivered {redelivered:.1f} s after its first delivery; ran once")
