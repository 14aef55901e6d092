"""Scenario 5: a provider fault mix over 350 tasks (malformed streams included), each class with its terminal state
and attempts (SPEC §5, §6): 429 with Retry-After, 500 twice, 503 once and normal answers
all end ``done`` (charged once, for the attempt that answered); a hang ends ``failed``
at the soft time limit; a 400 ends ``failed`` at once, without a retry.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.reliability.invariants import assert_exactly_once, attempts_by_status, terminal
from tests.reliability.stack import Servers, accepted_ids, running, wait_until

pytestmark = pytest.mark.reliability

PER_CLASS = 50
# directive -> (status, attempts, error_code) expected of each of its tasks
CLASSES: dict[str, tuple[str, int, str | None]] = {
    "": ("done", 1, None),
    "#fake:error=429:1": ("done", 2, None),
    "#fake:error=500:2": ("done", 3, None),
    "#fake:error=503:1": ("done", 2, None),
    "#fake:hang": ("failed", 1, "timeout"),
    "#fake:error=400": ("failed", 1, "provider_rejected"),
    "#fake:malformed:1": ("done", 2, None),  # a stream that ends without its final message
}
SHORT_LIMITS = {
    "LLM_HTTP_TIMEOUT": "2",
    "TASK_SOFT_TIME_LIMIT": "3",
    "TASK_TIME_LIMIT": "5",
    "TASK_LEASE_SECONDS": "6",
    "TASK_HEARTBEAT_S": "2",
    "TASK_RETRY_BACKOFF_S": "0.2",
    "TASK_RETRY_BACKOFF_MAX_S": "2",
    "SWEEPER_INTERVAL_S": "2",
    "SWEEPER_PENDING_GRACE_S": "3",
    "FAKE_LLM_LATENCY_MS": "100",
    "LLM_SLOT_WAIT_S": "1",  # inside the soft limit, as the defaults are (5 s < 90 s): the settings check it
}


def test_provider_fault_mix_ends_each_class_in_its_state_with_its_attempts(
    servers: Servers, api_key: str, measured: list[str]
) -> None:
    with running(servers, **SHORT_LIMITS) as (stack, db):
        prompts = [(d, f"fault {d} {n} {uuid.uuid4()}") for n in range(PER_CLASS) for d in CLASSES]
        started = time.monotonic()
        ids = accepted_ids(stack.submit(api_key, [p for _, p in prompts]))
        by_class = {d: [i for i, (dd, _) in zip(ids, prompts, strict=True) if dd == d] for d in CLASSES}
        wait_until(lambda: terminal(db, ids), 180, 1, "every task of the mix terminal")
        took = time.monotonic() - started
        assert_exactly_once(db, ids)
        for directive, expected in CLASSES.items():
            assert attempts_by_status(db, by_class[directive]) == {expected: PER_CLASS}, directive or "normal"
        charged = dict(
            db.rows(
                "SELECT t.status, count(u.id) FROM llm_aitask t LEFT JOIN billing_usageentry u ON u.task_id = t.id "
                "WHERE t.id = ANY(%s::uuid[]) GROUP BY 1",
                ids,
            )
        )
        done_classes = sum(1 for status, _, _ in CLASSES.values() if status == "done")
        assert charged.get("done") == done_classes * PER_CLASS  # one ledger row per done task
        assert not charged.get("failed")  # a failed call produced nothing: no charge
        measured.append(f"provider mix: {len(prompts)} tasks terminal {took:.0f} s after the first submit")
