"""What every scenario asserts at the end, counted in the stack's database (SPEC §5):

- every accepted task is terminal (done, failed or cancelled);
- the ledger holds at most one row per task, exactly one per ``done`` task;
- the outbox holds exactly one ``llm.ai_task.finished`` event per terminal task, and its
  consumer (analytics) recorded exactly one outcome for it: the event reached it once;
- no reservation is left ``held``; a done task's reservation is settled.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tests.reliability.stack import TERMINAL, Database, wait_until


@dataclass(frozen=True)
class Counts:
    tasks: int
    by_status: dict[str, int]
    ledger_rows: Counter[str]
    finished_events: Counter[str]
    outcomes: Counter[str]
    held_reservations: int
    unsettled_done: int

    def problems(self, ids: list[str]) -> list[str]:
        problems = []
        if self.tasks != len(ids):
            problems.append(f"{len(ids) - self.tasks} accepted tasks are missing")
        if open_ := {s: n for s, n in self.by_status.items() if s not in TERMINAL}:
            problems.append(f"tasks still open: {open_}")
        if twice := [t for t, n in self.ledger_rows.items() if n > 1]:
            problems.append(f"{len(twice)} tasks charged more than once")
        terminal = sum(n for s, n in self.by_status.items() if s in TERMINAL)
        if (wrong := [t for t in ids if self.finished_events[t] != 1]) and terminal == len(ids):
            problems.append(f"{len(wrong)} tasks without exactly one finished event")
        if (lost := [t for t in ids if self.outcomes[t] != 1]) and terminal == len(ids):
            problems.append(f"{len(lost)} tasks whose finished event did not reach analytics exactly once")
        if self.held_reservations:
            problems.append(f"{self.held_reservations} reservations still held")
        if self.unsettled_done:
            problems.append(f"{self.unsettled_done} done tasks without exactly one ledger row")
        return problems


def count(db: Database, ids: list[str]) -> Counts:
    def per_task(sql: str) -> Counter[str]:
        return Counter({str(task): int(n) for task, n in db.rows(sql, ids)})

    return Counts(
        tasks=int(db.scalar("SELECT count(*) FROM llm_aitask WHERE id = ANY(%s::uuid[])", ids)),
        by_status=db.statuses(ids),
        ledger_rows=per_task(
            "SELECT task_id, count(*) FROM billing_usageentry WHERE task_id = ANY(%s::uuid[]) GROUP BY 1"
        ),
        finished_events=per_task(
            "SELECT (payload->>'task_id')::uuid, count(*) FROM kernel_outboxevent "
            "WHERE event_type = 'llm.ai_task.finished' AND (payload->>'task_id')::uuid = ANY(%s::uuid[]) GROUP BY 1"
        ),
        outcomes=per_task(
            "SELECT task_id, count(*) FROM analytics_taskoutcome WHERE task_id = ANY(%s::uuid[]) GROUP BY 1"
        ),
        held_reservations=int(
            db.scalar(
                "SELECT count(*) FROM billing_reservation WHERE task_id = ANY(%s::uuid[]) AND status = 'held'", ids
            )
        ),
        unsettled_done=int(
            db.scalar(
                "SELECT count(*) FROM llm_aitask t WHERE t.id = ANY(%s::uuid[]) AND t.status = 'done' AND "
                "(SELECT count(*) FROM billing_usageentry u WHERE u.task_id = t.id) <> 1",
                ids,
            )
        ),
    )


def assert_exactly_once(db: Database, ids: list[str], *, timeout: float = 60) -> Counts:
    """Wait (up to ``timeout``) for the counts to settle, then assert every promise."""
    latest: list[Counts] = []

    def settled() -> bool:
        latest[:] = [count(db, ids)]
        return not latest[0].problems(ids)

    try:
        wait_until(settled, timeout, interval=1, what="the exactly-once counts")
    except TimeoutError:
        raise AssertionError("; ".join(latest[0].problems(ids)) + f" (statuses {latest[0].by_status})") from None
    return latest[0]


def terminal(db: Database, ids: list[str]) -> bool:
    return sum(n for s, n in db.statuses(ids).items() if s in TERMINAL) == len(ids)


def attempts_by_status(db: Database, ids: list[str]) -> dict[tuple[str, int, str | None], int]:
    """(status, attempts, error_code) → tasks."""
    rows = db.rows(
        "SELECT status, attempts, error_code, count(*) FROM llm_aitask WHERE id = ANY(%s::uuid[]) GROUP BY 1, 2, 3", ids
    )
    return {(s, a, e): n for s, a, e, n in rows}
