"""Scenarios 2 and 3: the broker's messages lost, and the broker down during submits.

Redis is never the source of truth (SPEC §5): held work waits in PostgreSQL and the
gate sends it; a task sent but lost is sent again by the sweeper once it has waited
``SWEEPER_PENDING_GRACE_S`` (shortened here, with the sweeper's interval: these
scenarios are about what is recovered, not how fast).
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from tests.reliability.invariants import assert_exactly_once, terminal
from tests.reliability.stack import Servers, accepted_ids, running, wait_until

pytestmark = pytest.mark.reliability

FAST_SWEEPER = {"SWEEPER_INTERVAL_S": "2", "SWEEPER_PENDING_GRACE_S": "3", "FAKE_LLM_LATENCY_MS": "300"}


def test_redis_restarted_empty_with_200_queued_runs_every_task_once(
    servers: Servers, api_key: str, measured: list[str]
) -> None:
    with running(servers, **FAST_SWEEPER, WORKER_DEFAULT_CONCURRENCY="50") as (stack, db):
        # The pool stops reading: the gate fills the broker up to its window and holds the rest.
        stack.signal("worker-default", signal.SIGSTOP)
        ids = accepted_ids(stack.submit(api_key, [f"loss {n} {uuid.uuid4()}" for n in range(200)]))
        sent = int(
            db.scalar("SELECT count(*) FROM llm_aitask WHERE id = ANY(%s::uuid[]) AND dispatched_at IS NOT NULL", ids)
        )
        queued = servers.redis.client(0).llen("default")
        copies_before = dict(db.rows("SELECT id::text, dispatch_count FROM llm_aitask WHERE id = ANY(%s::uuid[])", ids))
        assert 0 < sent < 200
        restarted = time.monotonic()
        servers.redis.stop()
        servers.redis.start()  # empty: the messages, the pools' slots, the caches are gone
        assert servers.redis.client(0).llen("default") == 0
        stack.signal("worker-default", signal.SIGCONT)
        wait_until(lambda: terminal(db, ids), 120, 0.5, "every task terminal after the broker loss")
        took = time.monotonic() - restarted
        counts = assert_exactly_once(db, ids)
        assert counts.by_status == {"done": 200}
        copies_after = dict(db.rows("SELECT id::text, dispatch_count FROM llm_aitask WHERE id = ANY(%s::uuid[])", ids))
        lost = [i for i in ids if copies_before[i] > 0]
        resent = sum(copies_after[i] > copies_before[i] for i in lost)
        assert resent >= len(lost) - 1  # every lost message was sent again (one may have reached the pool)
        measured.append(
            f"redis restarted empty: {sent} sent ({queued} in the queue), {200 - sent} held; all 200 done "
            f"{took:.0f} s after the restart ({resent} of the {len(lost)} lost re-sent by the sweeper, grace 3 s)"
        )


def test_submits_while_redis_is_down_are_accepted_and_run_once_it_is_back(
    servers: Servers, api_key: str, measured: list[str]
) -> None:
    with running(servers, **FAST_SWEEPER) as (stack, db):
        servers.redis.stop()
        started = time.monotonic()
        responses = stack.submit(api_key, [f"down {n} {uuid.uuid4()}" for n in range(50)])
        submit_s = time.monotonic() - started
        assert {r.status_code for r in responses} == {202}, {r.status_code: r.text[:200] for r in responses}
        ids = accepted_ids(responses)
        assert stack.readyz() == 503
        time.sleep(2)
        servers.redis.start()
        back = time.monotonic()
        wait_until(lambda: terminal(db, ids), 90, 0.5, "every task terminal once Redis is back")
        took = time.monotonic() - back
        counts = assert_exactly_once(db, ids)
        assert counts.by_status == {"done": 50}
        measured.append(
            f"redis down: 50 submits answered 202 in {submit_s:.1f} s; all 50 done {took:.0f} s after Redis came back"
        )


def test_events_waiting_for_their_consumers_survive_a_redis_restart(servers: Servers, api_key: str) -> None:
    """The relay records one delivery per event and subscriber, then sends one message per
    subscriber and batch; a delivery its handler never confirmed (the broker lost it) is
    sent again (OUTBOX_REDELIVER_AFTER_S, shortened here from 300 s)."""
    with running(servers, **FAST_SWEEPER, OUTBOX_REDELIVER_AFTER_S="3") as (stack, db):
        # The consumers lag (worker-low stops reading): the finished events wait in the broker.
        stack.signal("worker-low", signal.SIGSTOP)
        ids = accepted_ids(stack.submit(api_key, [f"events {n} {uuid.uuid4()}" for n in range(20)]))
        wait_until(lambda: terminal(db, ids), 60, 0.5, "every task terminal")
        relayed = (
            "SELECT count(*) FROM kernel_outboxevent WHERE published_at IS NOT NULL "
            "AND (payload->>'task_id')::uuid = ANY(%s::uuid[])"
        )
        wait_until(lambda: db.scalar(relayed, ids) == len(ids), 30, 0.5, "every event relayed")
        servers.redis.stop()
        servers.redis.start()
        stack.signal("worker-low", signal.SIGCONT)
        assert_exactly_once(db, ids, timeout=60)
