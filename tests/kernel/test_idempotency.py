"""Idempotent execution: replay, mismatch, in-flight, failure frees the key, expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from kernel import services
from kernel.models import IdempotencyRecord

pytestmark = pytest.mark.django_db


def op(status: int = 202, body: object = None):
    calls: list[int] = []

    def run():
        calls.append(1)
        return status, body or {"n": len(calls)}, {"Location": "/x"}

    return run, calls


def test_first_call_runs_and_second_replays() -> None:
    run, calls = op()
    first = services.idempotent_execute(scope="org", key="k", fingerprint="f", operation=run)
    second = services.idempotent_execute(scope="org", key="k", fingerprint="f", operation=run)
    assert (first.replayed, second.replayed) == (False, True)
    assert second.status == 202 and second.body == {"n": 1} and second.headers == {"Location": "/x"}
    assert len(calls) == 1


def test_other_body_is_422_and_other_scope_is_independent() -> None:
    run, calls = op()
    services.idempotent_execute(scope="org", key="k", fingerprint="f", operation=run)
    with pytest.raises(services.IdempotencyMismatch):
        services.idempotent_execute(scope="org", key="k", fingerprint="other", operation=run)
    services.idempotent_execute(scope="org-2", key="k", fingerprint="other", operation=run)
    assert len(calls) == 2


def test_a_row_left_in_flight_by_an_older_release_is_409_until_abandoned() -> None:
    # This release never commits an in-flight row; one written by the previous release
    # (key, task and answer in three transactions) may still be there after a deploy.
    IdempotencyRecord.objects.create(scope="org", key="k", fingerprint="f")
    run, calls = op()
    with pytest.raises(services.IdempotencyInFlight):
        services.idempotent_execute(scope="org", key="k", fingerprint="f", operation=run)
    IdempotencyRecord.objects.update(updated_at=timezone.now() - timedelta(minutes=10))
    assert not services.idempotent_execute(scope="org", key="k", fingerprint="f", operation=run).replayed
    assert len(calls) == 1


def test_failure_frees_the_key() -> None:
    def boom():
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        services.idempotent_execute(scope="org", key="k", fingerprint="f", operation=boom)
    assert not IdempotencyRecord.objects.exists()


def test_expired_record_runs_again_and_cleanup_deletes_old_rows() -> None:
    run, calls = op()
    services.idempotent_execute(scope="org", key="k", fingerprint="f", operation=run)
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert not services.idempotent_execute(scope="org", key="k", fingerprint="f2", operation=run).replayed
    assert len(calls) == 2
    IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(hours=25))
    assert services.idempotency_cleanup() == 1
