"""Shadow reads (kernel.shadow): the old path is served, a sampled new path is compared,
differences are logged and counted; used by the task list (llm.selectors.task_page)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from kernel.shadow import ShadowRead, describe
from llm import selectors
from llm.models import AITask
from tests.test_logging import RecordCapture

pytestmark = pytest.mark.django_db


@pytest.fixture
def records() -> Iterator[RecordCapture]:
    handler = RecordCapture()
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


def count(read: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("switchyard_shadow_reads_total", {"read": read, "outcome": outcome}) or 0.0


def test_a_planted_difference_is_logged_and_counted_and_the_old_result_served(records: RecordCapture) -> None:
    shadow: ShadowRead[list[int]] = ShadowRead("tests.planted", rate=1.0)
    before = count("tests.planted", "mismatch")
    assert shadow.run(lambda: [1, 2, 3], lambda: [1, 2]) == [1, 2, 3]
    assert count("tests.planted", "mismatch") == before + 1
    [event] = records.events("shadow_read_mismatch")
    assert event["read"] == "tests.planted"
    assert event["difference"] == "value: lengths 3 / 2"


def test_a_failing_new_path_is_counted_and_never_reaches_the_caller(records: RecordCapture) -> None:
    shadow: ShadowRead[int] = ShadowRead("tests.failing", rate=1.0)
    before = count("tests.failing", "error")
    assert shadow.run(lambda: 1, lambda: 1 // 0) == 1
    assert count("tests.failing", "error") == before + 1
    assert "ZeroDivisionError" in records.events("shadow_read_failed")[0]["error"]


def test_unsampled_calls_never_run_the_new_path() -> None:
    calls: list[int] = []

    def new() -> int:
        calls.append(1)
        return 2

    shadow: ShadowRead[int] = ShadowRead("tests.off", rate=0.0)
    assert shadow.run(lambda: 1, new) == 1
    assert calls == []


def test_describe_points_at_the_first_difference() -> None:
    old, new = {"ids": ["a", "b"], "next": None}, {"ids": ["a", "c"], "next": None}
    assert describe(old, new) == "ids[1]: old 'b', new 'c' (lengths 2 / 2)"
    assert describe({"next": "x"}, {"next": None}) == "next: old 'x', new None"


def _tasks(tenant: Any, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        response = tenant.client.post("/api/v1/ai-tasks/", {"prompt": f"hello {uuid.uuid4()}"}, format="json")
        assert response.status_code == 202
        ids.append(response.json()["id"])
    # Ties on created_at: the keyset must order them by id in both paths.
    AITask.objects.filter(id__in=ids[1:4]).update(created_at=timezone.now())
    return ids


def test_the_task_list_shadow_matches_on_every_page(tenant: Any, settings: Any, records: RecordCapture) -> None:
    settings.SHADOW_READ_RATE = 1.0
    _tasks(tenant, 7)
    before = count("llm.task_page", "match")
    seen: list[str] = []
    url: str | None = "/api/v1/ai-tasks/?limit=2"
    while url:
        body = tenant.client.get(url).json()
        seen += [task["id"] for task in body["results"]]
        url = body["next"]
    assert len(seen) == len(set(seen)) == 7
    assert count("llm.task_page", "match") == before + 4  # four pages, each compared
    assert records.events("shadow_read_mismatch") == []
    assert records.events("query_budget_exceeded") == []  # the shadow's queries are not the request's


def test_the_task_list_reports_a_planted_difference(tenant: Any, records: RecordCapture) -> None:
    """The real page function on both sides; the planted new path forgets the tie-break
    on id (a classic keyset bug), so a page boundary inside a tie differs."""
    ids = _tasks(tenant, 6)
    org = uuid.UUID(tenant.organization_id)
    _, cursor = selectors.task_page(organization_id=org, status=None, cursor=None, limit=2)
    after = selectors.decode_cursor(cursor or "")

    def page(keyset: Any) -> Any:
        return lambda: selectors._task_page(organization_id=org, status=None, after=after, limit=2, keyset=keyset)

    shadow = ShadowRead("llm.task_page.planted", key=selectors._page_key, rate=1.0)
    served = shadow.run(
        page(selectors._keyset_or), page(lambda qs, created_at, _id: qs.filter(created_at__lt=created_at))
    )
    assert [t.id for t in served[0]] == [t.id for t in page(selectors._keyset_row)()[0]]
    assert count("llm.task_page.planted", "mismatch") == 1
    assert records.events("shadow_read_mismatch")[0]["difference"].startswith("ids[0]")
    assert len(ids) == 6
