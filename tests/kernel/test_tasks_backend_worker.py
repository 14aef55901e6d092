"""kernel.tasks_backend on real workers: each pool runs its tasks, retries happen on the
worker, and the test process reads the results back from PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.db import transaction

from kernel.models import TaskRecord
from tests.kernel import django_tasks
from tests.pipeline.conftest import Worker, start_worker, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
__all__ = ["start_worker"]  # the fixture, shared with the pipeline tests


def test_real_workers_run_tasks_on_their_pools_and_results_are_read_back(
    start_worker: Callable[..., Worker],
) -> None:
    start_worker("priority")
    start_worker("low")
    with transaction.atomic():
        added = django_tasks.add.enqueue(20, 22)
        shouted = django_tasks.shout.enqueue("hi")
    retried = django_tasks.flaky.using(queue_name="priority").enqueue("again")

    def finished(task: Any, result_id: str) -> Any:
        result = task.get_result(result_id)
        return result if result.is_finished else None

    assert wait_for(lambda: finished(django_tasks.add, added.id)).return_value == 42  # type: ignore[attr-defined]
    assert wait_for(lambda: finished(django_tasks.shout, shouted.id)).return_value == "HI"  # type: ignore[attr-defined]
    flaky = wait_for(lambda: finished(django_tasks.flaky, retried.id))
    assert flaky.return_value == {"word": "again", "attempt": 2}  # type: ignore[attr-defined]
    assert [e.exception_class for e in flaky.errors] == [ConnectionError]  # type: ignore[attr-defined]
    assert TaskRecord.objects.get(id=shouted.id).celery_queue == "low"
