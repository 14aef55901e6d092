"""Scenarios 1 and 4: a pool killed mid-run, and PostgreSQL restarted mid-run.

Both measure recovery, so leases and heartbeats keep their production defaults (a 30 s
lease renewed every 10 s). The SIGKILL scenario keeps the sweeper's too (a sweep every
30 s, a grace of 30 s): it measures SPEC's bound. The PostgreSQL one sweeps every 10 s.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.reliability.invariants import assert_exactly_once, attempts_by_status, terminal
from tests.reliability.stack import ROLES, Servers, accepted_ids, running, wait_until

pytestmark = pytest.mark.reliability


def test_sigkill_of_the_default_pool_mid_run_loses_and_doubles_nothing(
    servers: Servers, api_key: str, measured: list[str]
) -> None:
    with running(servers, FAKE_LLM_LATENCY_MS="1500") as (stack, db):
        ids = accepted_ids(stack.submit(api_key, [f"crash {n} {uuid.uuid4()}" for n in range(200)]))
        # Mid-run: some done, a pool's worth in flight, the rest queued or held at the gate.
        wait_until(lambda: db.statuses(ids).get("done", 0) >= 40, 60, 0.2, "40 tasks done")
        in_flight = db.statuses(ids).get("processing", 0)
        killed = time.monotonic()
        stack.kill("worker-default")
        stack.start("worker-default")  # what a supervisor does
        wait_until(lambda: terminal(db, ids), 150, 0.5, "every task terminal after the kill")
        counts = assert_exactly_once(db, ids)
        assert counts.by_status == {"done": 200}
        # The calls cut by the kill ran again (a second attempt); nothing ran a third time.
        attempts = attempts_by_status(db, ids)
        assert {a for _, a, _ in attempts} <= {1, 2}, attempts
        assert in_flight > 0
        measured.append(
            f"sigkill worker-default: {in_flight} calls in flight, all 200 done "
            f"{time.monotonic() - killed:.0f} s after the kill (lease 30 s, sweep every 30 s)"
        )


PG_RESTART = {"FAKE_LLM_LATENCY_MS": "1000", "WORKER_DEFAULT_CONCURRENCY": "20", "SWEEPER_INTERVAL_S": "10"}


def test_postgresql_restart_mid_run_recovers_without_restarting_a_process(
    servers: Servers, api_key: str, measured: list[str]
) -> None:
    with running(servers, **PG_RESTART) as (stack, db):
        ids = accepted_ids(stack.submit(api_key, [f"pg {n} {uuid.uuid4()}" for n in range(100)]))
        pids = {role: stack.processes[role].pid for role in ROLES}
        wait_until(lambda: db.statuses(ids).get("done", 0) >= 20, 60, 0.2, "20 tasks done")
        stopped = time.monotonic()
        servers.postgres.stop("fast")  # every connection is cut
        outage = wait_until(lambda: stack.readyz() == 503, 20, 0.2, "/readyz to answer 503")
        time.sleep(5)
        assert stack.readyz() == 503
        servers.postgres.start()
        restarted = time.monotonic()
        ready = wait_until(lambda: stack.readyz() == 200, 60, 0.5, "/readyz to answer 200 again")
        wait_until(lambda: terminal(db, ids), 150, 0.5, "every task terminal after the restart")
        drained = time.monotonic() - restarted
        assert_exactly_once(db, ids)
        assert all(stack.alive(role) for role in ROLES)
        assert {role: stack.processes[role].pid for role in ROLES} == pids  # nothing was restarted
        resent = db.scalar("SELECT count(*) FROM llm_aitask WHERE id = ANY(%s::uuid[]) AND dispatch_count > 1", ids)
        measured.append(
            f"postgres restart: /readyz 503 {outage:.1f} s after the stop, 200 {ready:.1f} s after the start; "
            f"{resent} tasks sent again by the sweeper; all 100 terminal {drained:.0f} s after the start "
            f"(down {restarted - stopped:.0f} s, sweep every 10 s), "
            f"{attempts_by_status(db, ids)}"
        )
